"""The web dashboard: Jinja2 pages under /ui/, vendored static assets, local API docs."""
