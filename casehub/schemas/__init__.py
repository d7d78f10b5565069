"""Marshmallow schemas: XxxSchema (out), XxxCreateSchema, XxxUpdateSchema, XxxQueryArgsSchema."""
