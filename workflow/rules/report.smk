# Report notebooks (papermill) are added by the report rules; until then nothing to render.


def report_targets():
    return []
