"""Follow-up questions: the answered conversation's KV cache is extended with the new turn only.

The reference is the same conversation prefilled from scratch in one go (fp32): the greedy
tokens must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ragvl.models.converter.convert import convert
from ragvl.models.runtime.conversation import user_turn
from ragvl.models.runtime.generation import GenerationSettings
from ragvl.models.runtime.qwen2vl import Qwen2VL, user_message
from ragvl.models.runtime.vlm import Prompt

from tiny_numpy import make_numpy_checkpoint  # noqa: E402

N_NEW = 32


def greedy(n=N_NEW, ignore_eos=True):
    return GenerationSettings(max_new_tokens=n, ignore_eos=ignore_eos)


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conv")
    return Qwen2VL(convert(make_numpy_checkpoint(tmp / "ckpt", variant="b", seed=2), tmp / "m", log=lambda m: None))


def noise(w, h, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def from_scratch(vlm: Qwen2VL, conv_prompt: Prompt, ids: list[int], n=N_NEW) -> list[int]:
    """Greedy tokens after prefilling `ids` (with the first prompt's images) in one go."""
    p = Prompt(np.asarray(ids, np.int64), conv_prompt.pixel_values, conv_prompt.grids, conv_prompt.given)
    return vlm.generate_prompt(p, greedy(n)).consume().token_ids


@pytest.mark.parametrize("first_len", [12, 1])
def test_follow_up_equals_whole_conversation_from_scratch(vlm, first_len):
    images = [noise(200, 140, 1), noise(90, 160, 2)]
    first = vlm.generate(user_message("Compare the two pictures.", 2), images, greedy(first_len)).consume()
    conv = first.conversation
    assert conv.ids == list(first.conversation.prompt.ids) + first.token_ids
    # stopped by length: the last token was picked but never fed, so it is prefilled with the turn
    assert conv.cached == len(conv.ids) - 1

    second = vlm.follow_up(conv, "And in Q4?", greedy()).consume()
    assert second.continued and len(second.token_ids) == N_NEW
    full = second.conversation.ids[:second.prompt_tokens]
    assert full[:len(conv.ids)] == conv.ids
    # The added tokens are the chat template's rendering of the new turn: the tail of the whole
    # conversation rendered and tokenized (special tokens split cleanly at <|im_end|>).
    counts = [int(np.prod(g)) // 4 for g in conv.prompt.grids]
    rendered = vlm.tokenizer.encode_prompt(vlm.tokenizer.apply_chat_template(
        conv.messages + [user_turn("And in Q4?")], add_generation_prompt=True), counts).tolist()
    added = full[len(conv.ids):]
    assert added[0] == vlm.tokenizer.im_end_id and rendered[-len(added):] == added
    assert second.token_ids == from_scratch(vlm, conv.prompt, full)
    assert second.timings.vision_s == 0 and second.prompt_tokens == len(full)

    # and once more on top of the follow-up
    third = vlm.follow_up(second.conversation, "Why?", greedy(16)).consume()
    full3 = third.conversation.ids[:third.prompt_tokens]
    assert third.continued and full3[:len(full)] == full
    assert third.token_ids == from_scratch(vlm, conv.prompt, full3, 16)


def test_follow_up_after_a_stop_token(vlm):
    """An answer that ended on <|im_end|> has every token in the cache; the turn is added after it."""
    messages, images = user_message("Hi", 1), [noise(56, 56, 3)]
    free = vlm.generate(messages, images, greedy(8)).consume().token_ids
    stop = GenerationSettings(max_new_tokens=40, eos_token_ids=(free[4],))  # stops at the 5th token at the latest
    first = vlm.generate(messages, images, stop).consume()
    conv = first.conversation
    assert first.stop_reason == "stop" and first.token_ids == free[:free.index(free[4])]
    assert conv.cached == len(conv.ids)
    second = vlm.follow_up(conv, "Go on.", greedy(12)).consume()
    assert second.token_ids == from_scratch(vlm, conv.prompt, second.conversation.ids[:second.prompt_tokens], 12)


def test_follow_up_over_stored_features(vlm):
    """A conversation whose images were given as features continues the same way."""
    from ragvl.models.runtime.vlm import ImageFeatures

    img = noise(120, 120, 4)
    prompt = vlm.build_prompt(user_message("x", 1), [img])
    feats = ImageFeatures(vlm.encode_images(prompt).astype(np.float16), prompt.grids[0])
    first = vlm.generate(user_message("What is it?", 1), [feats], greedy(8)).consume()
    assert first.vision == {"reused": 1, "computed": 0}
    second = vlm.follow_up(first.conversation, "Sure?", greedy(16)).consume()
    assert second.token_ids == from_scratch(vlm, first.conversation.prompt,
                                            second.conversation.ids[:second.prompt_tokens], 16)
