"""Stand-in for A1111 1.10.1 ``modules/ui_gradio_extensions.py``: puts the WebUI's ``script.js`` and
``javascript/*.js``, then each extension's ``javascript/*.js`` (``*.mjs`` as modules), into the page's head and
every ``style.css`` before ``</body>``, by wrapping ``gradio.routes.templates.TemplateResponse``. Files are served
through gradio's ``file=`` route (``standin_app.launch`` allows those folders). No localization, themes or user.css."""

import os

import gradio as gr

from modules import paths_internal, scripts, shared


def webpath(fn):
    # the mtime makes browsers fetch a changed file again
    return "file=%s?%s" % (os.path.abspath(fn), os.path.getmtime(fn))


def javascript_html():
    sources = [os.path.join(paths_internal.script_path, "script.js")] + [s.path for s in scripts.list_scripts("javascript", ".js")]
    tags = ['<script type="text/javascript" src="%s"></script>' % webpath(src) for src in sources]
    tags += ['<script type="module" src="%s"></script>' % webpath(s.path) for s in scripts.list_scripts("javascript", ".mjs")]
    return "\n".join(tags) + "\n"


def css_html():
    return "".join('<link rel="stylesheet" property="stylesheet" href="%s">' % webpath(css) for css in scripts.list_files_with_name("style.css"))


def reload_javascript():
    head, body = javascript_html().encode("utf8"), css_html().encode("utf8")

    def template_response(*args, **kwargs):
        response = shared.GradioTemplateResponseOriginal(*args, **kwargs)
        response.body = response.body.replace(b"</head>", head + b"</head>").replace(b"</body>", body + b"</body>")
        response.init_headers()
        return response

    gr.routes.templates.TemplateResponse = template_response


if getattr(shared, "GradioTemplateResponseOriginal", None) is None:  # gradio's own, kept across reloads
    shared.GradioTemplateResponseOriginal = gr.routes.templates.TemplateResponse
