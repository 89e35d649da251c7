// Stand-in for A1111 1.10.1 script.js: the page-wide helpers extension JavaScript relies on.
// gradioApp(), get_uiCurrentTab(), get_uiCurrentTabContent(), onUiUpdate(), onAfterUiUpdate(), onUiLoaded(),
// onUiTabChange(), executeCallbacks() and the `opts` object (filled by javascript/ui.js).
// As in 1.10.1: onUiLoaded callbacks run once #txt2img_prompt is in the page; onUiTabChange callbacks run each time
// another top-level tab button becomes the selected one (the first time too); onAfterUiUpdate callbacks run 200 ms
// after the page stops changing.

var opts = {};

function gradioApp() {
    const host = document.querySelector("gradio-app");
    if (host === null) return document;
    host.getElementById = (id) => document.getElementById(id);
    return host.shadowRoot || host;
}

function get_uiCurrentTab() {
    const nav = gradioApp().querySelector("#tabs > .tab-nav");
    return nav ? nav.querySelector("button.selected") : null;
}

function get_uiCurrentTabContent() {
    const panels = Array.from(gradioApp().querySelectorAll("#tabs > .tabitem[id^=tab_]"));
    return panels.find((panel) => panel.style.display !== "none") || null;
}

const standinCallbacks = {update: [], afterUpdate: [], loaded: [], tabChange: []};

function onUiUpdate(callback) {
    standinCallbacks.update.push(callback);
}

function onAfterUiUpdate(callback) {
    standinCallbacks.afterUpdate.push(callback);
}

function onUiLoaded(callback) {
    standinCallbacks.loaded.push(callback);
}

function onUiTabChange(callback) {
    standinCallbacks.tabChange.push(callback);
}

function executeCallbacks(queue, arg) {
    for (const fn of queue) {
        try {
            fn(arg);
        } catch (e) {
            console.error("stand-in: a UI callback failed", fn, e);
        }
    }
}

document.addEventListener("DOMContentLoaded", () => {
    let loaded = false;
    let selectedTab = null;
    let quietTimer = null;
    new MutationObserver((mutations) => {
        if (!loaded && gradioApp().querySelector("#txt2img_prompt")) {
            loaded = true;
            executeCallbacks(standinCallbacks.loaded);
        }
        executeCallbacks(standinCallbacks.update, mutations);
        clearTimeout(quietTimer);
        quietTimer = setTimeout(() => executeCallbacks(standinCallbacks.afterUpdate), 200);
        const tab = get_uiCurrentTab();
        if (tab && tab !== selectedTab) {
            selectedTab = tab;
            executeCallbacks(standinCallbacks.tabChange);
        }
    }).observe(gradioApp(), {childList: true, subtree: true});
});
