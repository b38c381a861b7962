"""`llmgen serve`: the OpenAI HTTP API over llmgen's own decoding (docs/serve.md).

- `protocol.py`   request bodies checked field by field; `to_config`, the one mapping onto DecodingConfig
- `responses.py`  OpenAI's response and chunk objects, usage, the system fingerprint
- `scheduler.py`  the worker thread: one batch, rows joining and leaving (continuous batching), cancel,
                  a lone request decoded speculatively with --draft
- `app.py`        the Starlette routes: translate requests into rows and events into answers
- `server.py`     uvicorn: binding, signals, the graceful shutdown; `running()` for tests

The HTTP side only translates; decoding is `llmgen.decoding.batch`'s.
"""
