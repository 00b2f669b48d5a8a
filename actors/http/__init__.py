"""The HTTP adapter: the Starlette app, its adapter actor and the hypercorn server.

Deliberately empty, so importing one module of the package (the JWT helpers, say)
does not load the server stack; import what you need from its module.
"""
