"""The HTTP edge: the middleware (ids, auth, body limit, outcome), the routes, their dependencies, the OpenAI
request schemas (`schemas/`) and the renderers that turn engine steps into OpenAI's JSON or SSE (`render/`)."""
