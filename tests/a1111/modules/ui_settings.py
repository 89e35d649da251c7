"""Stand-in for A1111 1.10.1 ``modules/ui_settings.py``: the quicksettings row and the hidden settings machinery of
the page (no Settings tab).

* ``create_ui``: the hidden ``#settings_json`` textbox (``opts.dumpjson()``, read by the page's JavaScript).
* ``add_quicksettings``: a ``#quicksettings`` row with one component per ``opts.quicksettings_list`` entry
  (``#setting_<key>``, plus a ``#refresh_<key>`` button for options with ``refresh``).
* ``add_functionality``: changing a quicksetting runs ``run_settings_single`` (``opts.set``, which for
  ``sd_model_checkpoint`` loads the model, then ``opts.save``); the hidden ``#change_checkpoint`` button does the
  same for ``sd_model_checkpoint`` with the page's ``desiredCheckpointName`` (JavaScript ``selectCheckpoint(name)``);
  page load refreshes the quicksettings' values.
"""

import gradio as gr

from modules import script_callbacks, shared, ui_common


def get_value_for_setting(key):
    """An update with the setting's value and fresh component arguments (e.g. a dropdown's choices)."""
    info = shared.opts.data_labels[key]
    args = info.component_args() if callable(info.component_args) else dict(info.component_args or {})
    args.pop("precision", None)
    return gr.update(value=getattr(shared.opts, key), **args)


def create_setting_component(key, is_quicksettings=False):
    info = shared.opts.data_labels[key]
    args = info.component_args
    args = args() if callable(args) else args
    default_components = {str: gr.Textbox, int: gr.Number, float: gr.Number, bool: gr.Checkbox}
    make = info.component or default_components.get(type(info.default))
    if make is None:
        raise Exception("no component for setting %s (a %s)" % (key, type(info.default).__name__))
    component = make(label=info.label, value=getattr(shared.opts, key), elem_id="setting_" + key, **(args or {}))
    if info.refresh:
        ui_common.create_refresh_button(component, info.refresh, info.component_args, "refresh_" + key)
    return component


class UiSettings:
    components = None
    component_dict = None
    dummy_component = None
    quicksettings_list = None
    quicksettings_names = None
    text_settings = None

    def run_settings_single(self, value, key):
        """Sets one option from its component; returns the component's update and the new settings json."""
        opts = shared.opts
        expected = opts.data_labels[key].default
        if not opts.same_type(value, expected):
            update = gr.update(visible=True)
        elif value is not None and opts.set(key, value):
            opts.save(filename=shared.config_filename)
            update = get_value_for_setting(key)
        else:  # unchanged, or the change failed: show the current value again
            update = gr.update(value=getattr(opts, key))
        return update, opts.dumpjson()

    def register_settings(self):
        script_callbacks.ui_settings_callback()  # extensions add their options

    def create_ui(self, loadsave, dummy_component):
        self.components = []
        self.component_dict = shared.settings_components = {}
        self.dummy_component = dummy_component or gr.Label(visible=False)
        self.text_settings = gr.Textbox(elem_id="settings_json", value=lambda: shared.opts.dumpjson(), visible=False)
        names = [key for key in shared.opts.quicksettings_list if key in shared.opts.data_labels]
        self.quicksettings_names = {key: position for position, key in enumerate(names)}
        self.quicksettings_list = [(position, key, shared.opts.data_labels[key]) for position, key in enumerate(names)]

    def add_quicksettings(self):
        with gr.Row(variant="compact", elem_id="quicksettings"):
            for _, key, _ in self.quicksettings_list:
                self.component_dict[key] = create_setting_component(key, is_quicksettings=True)

    def add_functionality(self, demo):
        for _, key, info in self.quicksettings_list:
            component = self.component_dict[key]
            event = component.blur if isinstance(component, gr.Textbox) else component.change
            event(fn=lambda value, key=key: self.run_settings_single(value, key=key), inputs=[component],
                  outputs=[component, self.text_settings], show_progress=info.refresh is not None)

        checkpoint = self.component_dict.get("sd_model_checkpoint")
        if checkpoint is not None:
            change = gr.Button("Change checkpoint", elem_id="change_checkpoint", visible=False)
            change.click(fn=lambda value, _: self.run_settings_single(value, key="sd_model_checkpoint"),
                         _js="(v) => { const wanted = desiredCheckpointName; desiredCheckpointName = null; return [wanted || v, null]; }",
                         inputs=[checkpoint, self.dummy_component], outputs=[checkpoint, self.text_settings])

        keys = [key for key in shared.opts.data_labels if key in self.component_dict]

        def get_settings_values():
            updates = [get_value_for_setting(key) for key in keys]
            return updates[0] if len(updates) == 1 else updates  # gradio takes one output's value as is

        demo.load(fn=get_settings_values, inputs=[], outputs=[self.component_dict[key] for key in keys], queue=False)
