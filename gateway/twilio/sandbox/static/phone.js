// The sandbox phone: polls the conversation once a second and posts the texts typed here.
// Plain JavaScript, no dependencies; user text is only ever set with textContent.
(function () {
  "use strict";

  var root = document.querySelector(".phone");
  var stateUrl = root.dataset.stateUrl;
  var sendUrl = root.dataset.sendUrl;
  var pageUrl = root.dataset.pageUrl;

  var numberForm = document.getElementById("number-form");
  var numberInput = document.getElementById("number");
  var numberError = document.getElementById("number-error");
  var knownNumbers = document.getElementById("known-numbers");
  var list = document.getElementById("messages");
  var empty = document.getElementById("empty");
  var conversation = document.getElementById("conversation");
  var sendForm = document.getElementById("send-form");
  var toSelect = document.getElementById("to");
  var bodyInput = document.getElementById("body");
  var sendButton = document.getElementById("send");
  var sendError = document.getElementById("send-error");
  var blockedNote = document.getElementById("blocked-note");
  var currentSenders = [];
  var testNumbers = document.getElementById("test-numbers");

  var number = numberInput.value.trim();
  var lastSnapshot = "";
  var inFlight = false;

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function time(iso) {
    var moment = new Date(iso);
    return isNaN(moment) ? "" : moment.toLocaleTimeString();
  }

  var ORIGINS = { twiml: "reply (TwiML)", twilio: "Twilio auto-reply", api: "", phone: "" };
  // Twilio refuses every text from a sender this number texted STOP to (21610) until it texts START,
  // UNSTOP or YES: that refusal is Twilio doing what it promised, not a fault.
  var OPTED_OUT_AT_TWILIO = 21610;

  function expectedRefusal(message) {
    return message.status === "refused" && message.error_code === OPTED_OUT_AT_TWILIO;
  }

  function describeOut(message) {
    var parts = [];
    var via = message.our_number || message.messaging_service_sid || "";
    if (via) parts.push("from " + via);
    if (ORIGINS[message.origin]) parts.push(ORIGINS[message.origin]);
    return parts.join(" · ");
  }

  function webhookLine(message) {
    if (message.webhook_status === null && message.webhook_error_code === null && !message.webhook_note) {
      return { text: "posting to the gateway…", failed: false };
    }
    var text = "gateway: ";
    if (message.webhook_status !== null) text += "HTTP " + message.webhook_status;
    if (message.webhook_error_code) text += " · Twilio error " + message.webhook_error_code;
    if (message.webhook_note) text += " · " + message.webhook_note;
    return { text: text, failed: Boolean(message.webhook_error_code) };
  }

  function renderMessage(message) {
    var item = element("li", "msg " + message.direction + " origin-" + message.origin + " status-" + message.status +
      (expectedRefusal(message) ? " expected" : ""));
    item.dataset.id = message.id;
    item.dataset.direction = message.direction;
    item.dataset.status = message.status;
    item.dataset.origin = message.origin;
    item.appendChild(element("span", "body", message.body));
    var meta = element("span", "meta");
    if (message.direction === "out") {
      if (expectedRefusal(message)) {
        meta.appendChild(element("span", "status", "refused by Twilio as expected: this number texted STOP to this " +
          "sender (error 21610)"));
      } else {
        meta.appendChild(element("span", "status", message.status));
      }
      if (message.error_code && !expectedRefusal(message)) meta.appendChild(document.createTextNode(" · error " + message.error_code +
        (message.error_message ? " " + message.error_message : "")));
      var about = describeOut(message);
      if (about) meta.appendChild(document.createTextNode(" · " + about));
    } else {
      meta.appendChild(document.createTextNode("to " + (message.our_number || "")));
    }
    meta.appendChild(document.createTextNode(" · " + time(message.at)));
    item.appendChild(meta);
    if (message.direction === "in") {
      var line = webhookLine(message);
      var webhook = element("span", "webhook" + (line.failed ? " failed" : ""), line.text);
      webhook.dataset.webhookStatus = message.webhook_status === null ? "" : String(message.webhook_status);
      item.appendChild(webhook);
    }
    return item;
  }

  function renderSenders(senders) {
    var chosen = toSelect.value;
    toSelect.textContent = "";
    senders.forEach(function (sender) {
      var label = sender.number + (sender.label ? " — " + sender.label : "") +
        (sender.messaging_service_sid ? " (" + sender.messaging_service_sid + ")" : "") +
        (sender.opted_out ? " · you opted out at Twilio" : "") +
        (sender.opt_out_handling === "none" ? " · no Twilio filtering" :
          sender.opt_out_handling === "twilio_advanced" ? " · Advanced Opt-Out" : "");
      var option = element("option", "", label);
      option.value = sender.number;
      toSelect.appendChild(option);
    });
    if (chosen && senders.some(function (s) { return s.number === chosen; })) toSelect.value = chosen;
    currentSenders = senders;
    renderBlockedNote();
  }

  function renderBlockedNote() {
    var chosen = currentSenders.filter(function (s) { return s.number === toSelect.value; })[0];
    blockedNote.hidden = !(chosen && chosen.opted_out);
  }

  toSelect.addEventListener("change", renderBlockedNote);

  function renderNumbers(state) {
    knownNumbers.textContent = "";
    var seen = {};
    state.handsets.concat(state.test_numbers.map(function (t) { return t.number; })).forEach(function (n) {
      if (seen[n]) return;
      seen[n] = true;
      var option = element("option");
      option.value = n;
      knownNumbers.appendChild(option);
    });
    if (!testNumbers.childElementCount) {
      state.test_numbers.forEach(function (t) {
        var item = element("li");
        var pick = element("button", "", t.number);
        pick.type = "button";
        pick.addEventListener("click", function () { open(t.number); });
        item.appendChild(pick);
        item.appendChild(document.createTextNode(" " + t.description));
        testNumbers.appendChild(item);
      });
    }
  }

  function render(state) {
    var snapshot = JSON.stringify(state);
    if (snapshot === lastSnapshot) return;
    lastSnapshot = snapshot;
    renderNumbers(state);
    renderSenders(state.senders);
    var atBottom = conversation.scrollHeight - conversation.scrollTop - conversation.clientHeight < 40;
    list.textContent = "";
    state.messages.forEach(function (message) { list.appendChild(renderMessage(message)); });
    empty.hidden = Boolean(state.number);
    if (state.number && !state.messages.length) {
      empty.hidden = false;
      empty.textContent = "No messages with " + state.number + " yet. Text one of our numbers below.";
    }
    sendForm.hidden = !state.number;
    if (atBottom) conversation.scrollTop = conversation.scrollHeight;
  }

  function refresh() {
    if (inFlight) return;
    inFlight = true;
    fetch(stateUrl + "?number=" + encodeURIComponent(number), { headers: { Accept: "application/json" } })
      .then(function (response) {
        return response.json().then(function (data) { return { ok: response.ok, data: data }; });
      })
      .then(function (result) {
        if (!result.ok) {
          numberError.textContent = (result.data.error && result.data.error.message) || "cannot load";
          numberError.hidden = false;
          return;
        }
        numberError.hidden = true;
        render(result.data);
      })
      .catch(function () {
        numberError.textContent = "The gateway is not answering; retrying…";
        numberError.hidden = false;
      })
      .finally(function () { inFlight = false; });
  }

  function open(value) {
    number = value.trim();
    numberInput.value = number;
    lastSnapshot = "";
    history.replaceState(null, "", pageUrl + (number ? "?number=" + encodeURIComponent(number) : ""));
    refresh();
  }

  numberForm.addEventListener("submit", function (event) {
    event.preventDefault();
    open(numberInput.value);
  });

  sendForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = bodyInput.value;
    if (!text.trim() || !toSelect.value) return;
    sendButton.disabled = true;
    fetch(sendUrl, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ from: number, to: toSelect.value, body: text })
    })
      .then(function (response) {
        return response.json().then(function (data) { return { ok: response.ok, data: data }; });
      })
      .then(function (result) {
        if (!result.ok) {
          sendError.textContent = (result.data.error && result.data.error.message) || "not sent";
          sendError.hidden = false;
          return;
        }
        sendError.hidden = true;
        bodyInput.value = "";
        refresh();
      })
      .catch(function () {
        sendError.textContent = "The gateway is not answering.";
        sendError.hidden = false;
      })
      .finally(function () { sendButton.disabled = false; });
  });

  bodyInput.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      sendForm.requestSubmit();
    }
  });

  refresh();
  setInterval(refresh, 1000);
})();
