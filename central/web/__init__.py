"""The centre's fleet web view (``ektp-central web``, or inside ``run`` with ``[web] listen``).

    app          create_app: the routes, the templates, the security headers
    fleet_view   the fleet table from the store's rows: filters, sort, regions, pages
    plots        a kiosk's history as inline SVG
    store_reader one thread owns the web view's store; the fleet reading kept a moment
    auth         HTTP basic against a users file of scrypt hashes
    server       listening (uvicorn) in the foreground or in a thread of `run`

docs/web.md describes it for operators.
"""
