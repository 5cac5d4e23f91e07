// Keeps pages current by re-fetching their server-rendered parts, and sends the few updates a user makes.
"use strict";

function refreshLoop(element) {
  const url = element.dataset.refresh;
  const tick = async () => {
    if (element.querySelector("[data-final]") && element.hasAttribute("data-stop-when-final")) return;
    try {
      const response = await fetch(url, { headers: { Accept: "text/html" } });
      if (response.ok) element.innerHTML = await response.text();
    } catch (error) { /* the server restarts or the network blips: try again on the next tick */ }
    setTimeout(tick, 1000);
  };
  setTimeout(tick, 1000);
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

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(refreshLoop);

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
