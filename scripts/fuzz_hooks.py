"""Schemathesis hooks for scripts/fuzz.sh: the rules flowscore enforces that JSON Schema cannot
state, so that generated requests meant to be valid are valid (requests meant to be invalid are
still generated from the schema). Each is stated in the OpenAPI descriptions too.

- `threshold` and `contamination` are alternatives: a request never carries both.
- Training rows uploaded with POST /train all have one length.
- The mask of POST /inpaint has as many rows as its inputs.
"""
import schemathesis


@schemathesis.hook
def filter_query(ctx, query):
    return not (query and query.get("threshold") is not None and query.get("contamination") is not None)


@schemathesis.hook
def filter_body(ctx, body):
    if not isinstance(body, dict):
        return True
    rows = body.get("inputs")
    if ctx.operation.path == "/train" and isinstance(rows, list) and rows and all(isinstance(r, list) for r in rows):
        return len({len(r) for r in rows}) == 1
    mask = body.get("mask")
    if ctx.operation.path.endswith("/inpaint") and isinstance(rows, list) and isinstance(mask, list):
        return len(rows) == len(mask)
    return True


@schemathesis.hook
def filter_case(ctx, case):
    # The same rules on whole cases, which every phase builds (some skip the per-part filters).
    return filter_query(ctx, case.query) and filter_body(ctx, case.body)
