"""What every `ragvl` command shares: the one-line error exit, stderr logging, common options.

Answers go to stdout; progress and logs go to stderr; `--json` prints one object for scripts.
Every failure the user can fix is a RagvlError, printed as one line with a non-zero exit; any
other exception also ends as one line naming its cause (RAGVL_DEBUG=1: the traceback). Both come
from one place, `guarded`, which every command registered on an `App` runs inside.
Environment defaults are read by typer (`envvar=`), so `--help` shows them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import click
import typer
from typer.core import TyperCommand

from ..errors import RagvlError, os_error_cause, short


def fail(message: str, code: int = 1) -> None:
    """Print the one-line error and exit non-zero."""
    print(f"ragvl: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


# Causes recognised in the messages of LanceDB / object_store errors (they carry no errno).
_CAUSES = (("no space left on device", "disk full (no space left on device)"),
           ("disk quota exceeded", "disk quota exceeded"),
           ("read-only file system", "read-only file system"),
           ("permission denied", "permission denied"),
           ("commit conflict", "commit conflict with another writer; run again"),
           ("retryable commit conflict", "commit conflict with another writer; run again"))

# What a storage-level read or decode failure says (LanceDB's IO errors, damaged files). Anything
# else, such as a constraint of the library ("Invalid input, ...") or a bug, is reported as it
# is, with its type: calling it damage would send users to delete a healthy index.
_DAMAGE = ("lanceerror(io)", "corrupt", "unexpected eof", "protobuf", "failed to decode", "checksum mismatch")


def describe_failure(e: BaseException, index: bool = True) -> str:
    """A short, one-line cause for an unexpected failure (disk full, permissions, corruption...).

    `index`: the command works on an index, so a read or decode failure may be its damaged files.
    """
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return "disk full (no space left on device)"
    if isinstance(e, OSError) and e.errno == errno.EROFS:
        return "read-only file system"
    text = str(e)
    low = text.lower()
    for needle, cause in _CAUSES:
        if needle in low:
            return cause
    if isinstance(e, OSError):
        return os_error_cause(e)
    if index and any(w in low for w in _DAMAGE):
        return f"damaged index files ({short(text, 160)})"
    return f"{type(e).__name__}: {short(text, 200)}"


@contextlib.contextmanager
def guarded(where: str | os.PathLike | None, *, index: bool = True) -> Iterator[None]:
    """Turn every failure in the body into one line naming `where` (the index, else the command) and
    the cause, with a non-zero exit. `index`: `where` is an index (an interrupt then says it is intact).

    RAGVL_DEBUG=1 re-raises unexpected errors so their traceback shows.
    """
    where = str(where) if where is not None else "ragvl"
    try:
        yield
    except RagvlError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail(f"{where}: interrupted" + ("; the index stays at its last committed version" if index else ""), 130)
    except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
        raise  # typer/click's own exits and usage errors, already worded for the user
    except Exception as e:
        if os.environ.get("RAGVL_DEBUG", "") not in ("", "0"):
            raise
        fail(f"{where}: {describe_failure(e, index)} (RAGVL_DEBUG=1 shows the traceback)")


class GuardedCommand(TyperCommand):
    """A command run inside :func:`guarded`: the one place every `ragvl` command gets its error exit.

    The failure names the command's index (its `--db`) where it has one, else the command.
    """

    def invoke(self, ctx: click.Context):
        if "db" in ctx.params:
            where, index = db_or_default(ctx.params["db"]), True
        else:
            names = []
            c = ctx
            while c.parent is not None:  # the root's name is the program's (ragvl, python -m ...)
                names.insert(0, c.info_name)
                c = c.parent
            where, index = " ".join(names) or "ragvl", False
        with guarded(where, index=index):
            return super().invoke(ctx)


class App(typer.Typer):
    """The `ragvl` typer app (and its command groups): every command registered on it is a GuardedCommand."""

    def command(self, name: str | None = None, *, cls=None, **kwargs):
        return super().command(name, cls=cls or GuardedCommand, **kwargs)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# Options shared by the commands that generate text: one definition, added to a command by
# `@generation_options`, which hands them to it as one `gen: GenerationFlags`.
MAX_NEW_TOKENS = typer.Option(None, "--max-new-tokens", "-n", help="Default: 256.")
_GENERATION_OPTIONS = (
    ("max_new_tokens", Optional[int], MAX_NEW_TOKENS),
    ("temperature", Optional[float], typer.Option(None, "--temperature", help="Sample at this temperature.")),
    ("top_p", Optional[float], typer.Option(None, "--top-p", help="Nucleus sampling.")),
    ("top_k_sampling", Optional[int], typer.Option(None, "--top-k-sampling",
                                                   help="Sample from the k most likely tokens.")),
    ("repetition_penalty", Optional[float], typer.Option(None, "--repetition-penalty")),
    ("greedy", Optional[bool], typer.Option(None, "--greedy/--sample", help="Force greedy or sampled decoding "
                                            "(default: the checkpoint's generation_config).")),
    ("seed", Optional[int], typer.Option(None, "--seed", help="Seed for sampling.")),
)


@dataclass(frozen=True)
class GenerationFlags:
    """The sampling flags as the user gave them (None: not given, keep the checkpoint's default)."""

    max_new_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k_sampling: Optional[int] = None
    repetition_penalty: Optional[float] = None
    greedy: Optional[bool] = None
    seed: Optional[int] = None

    def overrides(self) -> dict:
        """The flags given, as GenerationSettings fields."""
        o = dict(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                 top_k=self.top_k_sampling, repetition_penalty=self.repetition_penalty, seed=self.seed,
                 do_sample=None if self.greedy is None else not self.greedy)
        return {k: v for k, v in o.items() if v is not None}

    def settings(self, defaults):
        """The checkpoint's generation defaults with these flags applied."""
        return defaults.with_overrides(**self.overrides())


def generation_options(command):
    """Give a command the shared sampling flags, in place of its `gen` parameter.

    typer reads the wrapper's signature, so `--help` lists each flag; the command receives them
    as one `gen: GenerationFlags`.
    """
    sig = inspect.signature(command, eval_str=True)
    params = []
    for p in sig.parameters.values():
        if p.name == "gen":
            params += [inspect.Parameter(n, p.kind, default=opt, annotation=ann) for n, ann, opt in _GENERATION_OPTIONS]
        else:
            params.append(p)

    @functools.wraps(command)
    def wrapper(**kwargs):
        gen = GenerationFlags(**{n: kwargs.pop(n) for n, _, _ in _GENERATION_OPTIONS})
        return command(**kwargs, gen=gen)

    wrapper.__signature__ = sig.replace(parameters=params)
    # Evaluated, so that typer's get_type_hints needs no names from the command's module.
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


DEVICE = typer.Option(None, "--device", envvar="RAGVL_DEVICE", help="cpu or cuda.")


def timings_line(result: dict) -> str:
    """One stderr line from a Generation's or an Answer's `as_dict()`: prompt and new tokens, the
    time spent opening sessions (apart: no stage includes it), vision, prefill and decode speed."""
    t = result["timings"]
    return (f"{result['prompt_tokens']} prompt tokens, {result['new_tokens']} new; load {t['load_s']:.2f}s, "
            f"vision {t['vision_s']:.2f}s, prefill {t['prefill_s']:.2f}s, decode {t['decode_tok_s'] or 0:.1f} tok/s")


DB = typer.Option(None, "--db", envvar="RAGVL_DB",
                  help="The index folder, or an object-storage URI (s3://bucket/path) [default: .ragvl in the current folder].")
EMBEDDER = typer.Option(None, "--embedder", envvar="RAGVL_EMBEDDER",
                        help="A converted colqwen2 model folder or installed name [default: the installed one].")
ANSWERER = typer.Option(None, "--answerer", envvar="RAGVL_ANSWERER",
                        help="A converted qwen2-vl model folder or installed name [default: the installed one].")


IN_PATHS = typer.Option([], "--in", help="Only documents that are this file or lie under this folder (repeatable).")
GLOBS = typer.Option([], "--glob", help="Only documents whose path matches this pattern, e.g. '*2024*' (repeatable).")
WHERE = typer.Option([], "--where", help="Only documents whose PDF metadata match FIELD OP VALUE: fields title, "
                     "author, subject, created, modified; OP = != ~(contains) < <= > >=, e.g. 'author~smith', "
                     "'created>=2024' (repeatable: all must hold).")


def db_or_default(db: Path | None) -> Path:
    from ..store import default_db

    return db if db is not None else default_db()


def display_path(path: str) -> str:
    """`path` relative to the current folder where it lies under it, else as stored."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


MODE = typer.Option("visual", "--mode", help="Ranking: visual (the model's MaxSim), text (BM25 over the PDF "
                    "text layer) or hybrid (reciprocal rank fusion of both).")


def hit_ranks(h) -> str:
    """A hybrid hit's ranks in each ranking, e.g. ``visual 2, text 1``; empty for other modes."""
    if h.mode != "hybrid":
        return ""
    parts = [f"{n} {r}" for n, r in (("visual", h.visual_rank), ("text", h.text_rank)) if r is not None]
    return "  (" + ", ".join(parts) + ")"


def also_note(h) -> str:
    """Where else an identical copy of the hit's page is, e.g. ``  (also in a.pdf, b.pdf +3)``."""
    if not h.also:
        return ""
    shown = ", ".join(display_path(p) for p in h.also[:2])
    more = f" +{len(h.also) - 2}" if len(h.also) > 2 else ""
    return f"  (also in {shown}{more})"
