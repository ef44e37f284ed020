"""The API's routers, one per area, in the order ``create_app`` includes them (the order of
``/openapi.json``)."""
