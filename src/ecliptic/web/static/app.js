// Keeps pages current by re-fetching their server-rendered parts, and sends the few updates a user makes.
"use strict";

async function refreshOnce(element) {
  try {
    // A request that never answers must not stop the page from refreshing.
    const response = await fetch(element.dataset.refresh, {
      headers: { Accept: "text/html" },
      signal: AbortSignal.timeout(15000),
    });
    if (!response.ok) return;
    const html = await response.text();
    // Expanded parts (a run's output) stay expanded across the swap.
    const open = [...element.querySelectorAll("details[open][id]")].map((d) => d.id);
    element.innerHTML = html;
    for (const id of open) {
      const details = document.getElementById(id);
      if (details && element.contains(details)) details.open = true;
    }
  } catch (error) { /* the server restarts or the network blips: try again on the next tick */ }
}

function refreshLoop(element) {
  const tick = async () => {
    if (element.querySelector("[data-final]") && element.hasAttribute("data-stop-when-final")) return;
    await refreshOnce(element);
    setTimeout(tick, 1000);
  };
  setTimeout(tick, 1000);
}

function refreshAll() {
  document.querySelectorAll("[data-refresh]").forEach(refreshOnce);
}

async function changePhase(session, phase, status) {
  status.textContent = `${phase.toLowerCase()}…`;
  const response = await fetch(`/sessions/${session}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ kind: "uri:enum-value-update", path: "phase", value: phase }),
  });
  const body = await response.json();
  status.textContent = response.ok ? `now ${body.phase}` : body.message;
  return response.ok;
}

function showOffers(offerset, target) {
  target.replaceChildren();
  if (offerset.result !== "YES") {
    for (const message of offerset.meta.messages || []) {
      const line = document.createElement("p");
      line.className = `level-${message.level.toLowerCase()}`;
      line.textContent = `${message.level}: ${message.message}`;
      target.append(line);
    }
    return;
  }
  offerset.offers.forEach((offer, index) => {
    const row = document.createElement("div");
    row.className = "offer";
    const start = offer.schedule.available.start.split("/")[0];
    row.innerHTML = `<b>offer ${index + 1}</b><span class="mono"></span><span></span><span class="muted"></span>`;
    row.children[1].textContent = start;
    row.children[2].textContent = `${offer.compute.cores.max} cores · ${offer.compute.memory.max} GiB · ${offer.schedule.available.duration}`;
    row.children[3].textContent = `expires ${offer.expires}`;
    const button = document.createElement("button");
    button.textContent = "Accept";
    button.className = "accept";
    button.addEventListener("click", async () => {
      if (await changePhase(offer.meta.uuid, "ACCEPTED", document.getElementById("offer-status"))) {
        window.location = `/ui/sessions/${offer.meta.uuid}`;
      }
    });
    row.append(button);
    target.append(row);
  });
}

async function scheduleAction(schedule, action, status) {
  if (action === "delete" && !window.confirm("Delete this schedule and its runs?")) return;
  status.textContent = `${action}…`;
  const response = await fetch(`/schedules/${schedule}${action === "delete" ? "" : `/${action}`}`, {
    method: action === "delete" ? "DELETE" : "POST",
    headers: { Accept: "application/json" },
  });
  if (response.status === 204) {
    window.location = "/ui/schedules";
    return;
  }
  const body = await response.json();
  if (!response.ok) {
    status.textContent = body.message;
  } else if (action === "trigger") {
    status.textContent = `run ${body.id} of ${body.namespace}/${body.schedule}: ${body.state}`;
  } else {
    status.textContent = `${body.namespace}/${body.name} ${body.paused ? "paused" : "resumed"}`;
  }
  refreshAll();
}

function showErrors(body, list) {
  list.replaceChildren();
  for (const detail of body.details || []) {
    const item = document.createElement("li");
    item.className = "level-error";
    const where = document.createElement("b");
    where.textContent = (detail.loc || []).join(".") || "schedule";
    item.append(where, ` ${detail.msg}`);
    list.append(item);
  }
}

function scheduleForm(form) {
  const status = document.getElementById("schedule-form-status");
  const errors = document.getElementById("schedule-errors");
  const times = document.getElementById("schedule-preview");
  const send = async (path) => {
    errors.replaceChildren();
    times.replaceChildren();
    const response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/yaml", Accept: "application/json" },
      body: document.getElementById("schedule-text").value,
    });
    const body = await response.json();
    if (!response.ok) {
      status.textContent = body.message;
      status.className = "level-error";
      showErrors(body, errors);
      return null;
    }
    status.className = "muted";
    return body;
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.textContent = "creating…";
    const body = await send("/schedules");
    if (body === null) return;
    status.replaceChildren("created ");
    const link = document.createElement("a");
    link.href = `/ui/schedules/${body.id}`;
    link.textContent = `${body.namespace}/${body.name}`;
    status.append(link, `: ${body.description}`);
    refreshAll();
  });
  document.getElementById("preview-schedule").addEventListener("click", async () => {
    status.textContent = "previewing…";
    const body = await send("/preview");
    if (body === null) return;
    status.textContent = `${body.description} (${body.timezone})`;
    body.local.forEach((time, index) => {
      const item = document.createElement("li");
      item.textContent = `${time}  ·  ${body.times[index]}`;
      times.append(item);
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(refreshLoop);

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button.schedule-action");
    if (!button) return;
    await scheduleAction(button.dataset.schedule, button.dataset.action, document.getElementById("schedule-action-status"));
  });
  const scheduleFormElement = document.getElementById("schedule-form");
  if (scheduleFormElement) scheduleForm(scheduleFormElement);

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button.action");
    if (!button) return;
    await changePhase(button.dataset.session, button.dataset.phase, document.getElementById("action-status"));
  });

  const form = document.getElementById("offer-form");
  if (form) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const status = document.getElementById("offer-status");
      status.textContent = "asking…";
      const response = await fetch("/requests", {
        method: "POST",
        headers: { "Content-Type": "application/yaml", Accept: "application/json" },
        body: document.getElementById("request-text").value,
      });
      const body = await response.json();
      if (!response.ok && response.status !== 303) {
        status.textContent = body.message;
        document.getElementById("offers").replaceChildren();
        return;
      }
      status.textContent = body.result === "YES" ? `${body.offers.length} offers` : "no offers";
      showOffers(body, document.getElementById("offers"));
    });
  }
});
