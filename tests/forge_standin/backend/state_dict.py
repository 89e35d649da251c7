"""Stand-in for Forge's ``backend/state_dict.py``."""


def load_state_dict(model, sd, ignore_errors=[], log_name=None, ignore_start=None):
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k not in ignore_errors]
    unexpected = [k for k in unexpected if k not in ignore_errors]
    if isinstance(ignore_start, str):
        missing = [k for k in missing if not k.startswith(ignore_start)]
        unexpected = [k for k in unexpected if not k.startswith(ignore_start)]
    name = log_name or type(model).__name__
    if missing:
        print("%s Missing: %s" % (name, missing))
    if unexpected:
        print("%s Unexpected: %s" % (name, unexpected))
