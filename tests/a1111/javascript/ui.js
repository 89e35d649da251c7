// Stand-in for A1111 1.10.1 javascript/ui.js, the parts extensions use:
// selectCheckpoint(name) loads a checkpoint by title: it sets desiredCheckpointName and clicks the hidden
// #change_checkpoint button, whose handler (modules/ui_settings.py) sets sd_model_checkpoint to that name.
// `opts` gets the settings from the hidden #settings_json textbox once it is in the page.

var desiredCheckpointName = null;

function selectCheckpoint(name) {
    desiredCheckpointName = name;
    const button = gradioApp().getElementById("change_checkpoint");
    button.click();
}

onAfterUiUpdate(() => {
    if (Object.keys(opts).length > 0) return;
    const box = gradioApp().querySelector("#settings_json textarea");
    if (box && box.value) opts = JSON.parse(box.value);
});
