// BK-SDM extension: wire the Convert tab to A1111's progress bar and checkpoint dropdown.
// Uses A1111's globals (randomId, requestProgress, selectCheckpoint, gradioApp,
// onUiTabChange, get_uiCurrentTabContent), which 1.6 and 1.10 both have.

function bksdm_convert_submit() {
    var args = Array.prototype.slice.call(arguments);
    var id = randomId();
    requestProgress(id, gradioApp().getElementById("bksdm_convert_progress"), null, function() {});
    args[0] = id;
    return args;
}

function bksdm_refresh_checkpoints(title) {
    if (title) {
        var refresh = gradioApp().getElementById("refresh_sd_model_checkpoint");
        if (refresh) refresh.click();
    }
    return [];
}

function bksdm_load_checkpoint(title) {
    if (title) selectCheckpoint(title);
    return [];
}

onUiTabChange(function() {
    var tab = get_uiCurrentTabContent();
    if (tab && tab.id === "tab_bksdm") {
        var refresh = gradioApp().getElementById("bksdm_refresh_loaded");
        if (refresh) refresh.click();
    }
});
