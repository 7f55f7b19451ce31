"""Serving: HTTP requests -> batched rollouts -> OpenAI-compatible answers.

`jobs` turns one request's inputs and sampling settings into rows of a shared rollout and
reads each request's answers back; `scheduler` gathers the requests that arrive within a
short window into one rollout (one backend call per plan call for all of them) behind a
bounded queue; `openai_api` holds the OpenAI request and response shapes; `app` is the
FastAPI application and `server` runs it under uvicorn. This room imports `generation`
(the backend is whatever the Runtime it is given holds); it knows nothing of tasks or
training, and nothing imports it but the `serve` command. fastapi and uvicorn load only
in `app` and `server`.
"""
