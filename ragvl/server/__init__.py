"""`ragvl serve` (web page + JSON API, ragvl.server.app) and `ragvl mcp` (ragvl.server.mcp_server).

Both sit on one `Service` (ragvl.server.service): the Index, lazily loaded models, the answer
queue's cancellation and the indexing jobs.
"""
