"""`stillroom serve`: an OpenAI-compatible endpoint that answers each known task with its student when the student is
sure, and forwards everything else to the teacher, capturing every exchange for the next run.

Inside: `app` (the endpoints and the routing of one request), `protocol` (the wire format),
`registry` (which version may serve), `pool` (students on demand), `upstream` (the teacher),
`capture` (the log ingest reads), `audit` and `live` (shadow audits, live agreement, demotion),
`metrics` (Prometheus), `server` (uvicorn, and the bind check).
"""

from stillroom.serve.server import check_binding, serve

__all__ = ["check_binding", "serve"]
