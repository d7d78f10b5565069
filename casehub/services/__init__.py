"""Domain services: keyword-only `verb_noun(session, *, actor, ...)`; they flush, never commit."""
