"""The coloured message box every BK-SDM tab shows results and errors in."""
import html


def message(kind: str, text: str) -> str:
    """`kind` is "success" or "error" (style.css colours them)."""
    return '<div class="bksdm-message bksdm-%s">%s</div>' % (kind, html.escape(text))
