"""Schemathesis hooks for scripts/fuzz.sh: the rules flowscore enforces that JSON Schema cannot
state, so that generated requests meant to be valid are valid (requests meant to be invalid are
still generated from the schema). Each is stated in the OpenAPI descriptions too.

- `threshold`, `contamination` and `fdr` are alternatives: a request carries at most one.
- Training rows uploaded with POST /train all have one length.
- The mask of POST /inpaint has as many rows as its inputs.
- Training jobs train new versions of the served model only: a job under a new name would put a
  second model, of another row width, behind the `/models/{name}/...` routes that this document
  describes with the first model's rows (each model has its own /models/{name}/openapi.json).
"""
import schemathesis


SERVED = "tab"


def new_name(value):
    return value is not None and value != SERVED


@schemathesis.hook
def filter_query(ctx, query):
    if not query:
        return True
    if ctx.operation.path == "/train" and new_name(query.get("name")):
        return False
    chosen = [k for k in ("threshold", "contamination", "fdr") if query.get(k) is not None]
    return len(chosen) <= 1


@schemathesis.hook
def filter_body(ctx, body):
    if not isinstance(body, dict):
        return True
    rows = body.get("inputs")
    if ctx.operation.path == "/train" and new_name(body.get("name")):
        return False
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
