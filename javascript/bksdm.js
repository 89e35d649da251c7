// BK-SDM extension: wire its tabs to A1111's progress bar and checkpoint dropdown.
// Uses A1111's globals (randomId, requestProgress, selectCheckpoint, gradioApp,
// onUiTabChange, get_uiCurrentTabContent), which 1.6 and 1.10 both have.

// The first input of a progress-tracked button is a hidden task id, as in A1111's own tabs.
function bksdm_submit_with_progress(progressId, args) {
    args = Array.prototype.slice.call(args);
    var id = randomId();
    requestProgress(id, gradioApp().getElementById(progressId), null, function() {});
    args[0] = id;
    return args;
}

function bksdm_convert_submit() {
    return bksdm_submit_with_progress("bksdm_convert_progress", arguments);
}

function bksdm_latency_submit() {
    return bksdm_submit_with_progress("bksdm_latency_progress", arguments);
}

function bksdm_compare_submit() {
    return bksdm_submit_with_progress("bksdm_compare_progress", arguments);
}

function bksdm_refresh_checkpoints(title) {
    if (title) {
        // A1111's ↻ beside the checkpoint dropdown; Forge's has another id.
        var refresh = gradioApp().getElementById("refresh_sd_model_checkpoint") ||
            gradioApp().getElementById("forge_refresh_checkpoint");
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

// Jobs tab: click its ↻ every few seconds while the tab is on screen and "Auto-refresh"
// is ticked, so progress, loss curve, samples and log follow a running job by themselves.
setInterval(function() {
    var app = gradioApp();
    var refresh = app.getElementById("bksdm_jobs_refresh");
    var auto = app.querySelector("#bksdm_jobs_auto input");
    if (refresh && auto && auto.checked && refresh.offsetParent !== null) refresh.click();
}, 3000);
