"""OAuth 2: casehub is its own authorization server and its own resource server."""
