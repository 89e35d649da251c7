// Stand-in for A1111 1.10.1 javascript/progressbar.js: randomId() and requestProgress().
//
// requestProgress(id_task, progressbarContainer, gallery, atEnd, onProgress, inactivityTimeout = 40) puts a
// div.progressDiv > div.progress right before progressbarContainer and polls POST ./internal/progress with
// {id_task, live_preview: false} every 500 ms, showing "<textinfo> <percent>% ETA: <time>". It removes the bar and
// calls atEnd() once the task is completed, was active and no longer is, has neither been queued nor active for
// inactivityTimeout seconds, or a request fails. onProgress(response) gets every other response.
// No live previews (gallery is ignored) and no title or wake-lock updates.

function randomId() {
    const part = () => Math.random().toString(36).slice(2, 7);
    return "task(" + part() + part() + part() + ")";
}

function requestProgress(id_task, progressbarContainer, gallery, atEnd, onProgress, inactivityTimeout = 40) {
    const started = Date.now();
    const bar = document.createElement("div");
    bar.className = "progressDiv";
    const fill = document.createElement("div");
    fill.className = "progress";
    bar.appendChild(fill);
    progressbarContainer.parentNode.insertBefore(bar, progressbarContainer);

    let wasActive = false;
    let finished = false;
    const finish = () => {
        if (finished) return;
        finished = true;
        bar.remove();
        atEnd();
    };
    const seconds = (s) => (s >= 60 ? Math.floor(s / 60) + "m " : "") + Math.floor(s % 60) + "s";

    const poll = () => {
        fetch("./internal/progress", {
            method: "POST",
            headers: {"Content-Type": "application/json"},
            body: JSON.stringify({id_task: id_task, live_preview: false}),
        }).then((response) => {
            if (!response.ok) throw new Error("progress request failed: " + response.status);
            return response.json();
        }).then((res) => {
            if (res.completed) return finish();
            const fraction = res.progress || 0;
            fill.style.width = (fraction * 100) + "%";
            let text = fraction > 0 ? Math.round(fraction * 100) + "%" : "";
            if (res.eta) text += " ETA: " + seconds(res.eta);
            if (res.textinfo && !res.textinfo.includes("\n")) text = res.textinfo + " " + text;
            fill.textContent = text;

            wasActive = wasActive || res.active;
            const idle = (Date.now() - started) / 1000 > inactivityTimeout && !res.queued && !res.active;
            if ((wasActive && !res.active) || idle) return finish();
            if (onProgress) onProgress(res);
            setTimeout(poll, 500);
        }).catch(finish);
    };
    poll();
}
