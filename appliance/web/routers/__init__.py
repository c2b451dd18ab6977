"""The dashboard's routes, one router per area: health, session, overview, jobs, studies,
models, audit (metrics live with their collector in `web.metrics`)."""
