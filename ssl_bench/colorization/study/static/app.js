// Real-vs-fake colorization test: fetch a trial, show the pair for `seconds`, hide it, ask.
// The server alone knows which side is real; this page only reports the choice.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const KEY = "sslbench_turing_rater";
  let rater = localStorage.getItem(KEY);
  if (!rater || !/^[A-Za-z0-9_-]{1,64}$/.test(rater)) {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    rater = "r" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    localStorage.setItem(KEY, rater);
  }
  window.__turing = { rater: rater, shown: [], answered: 0 };

  let trial = null, askedAt = 0, busy = false;

  function setState(s) {
    document.body.dataset.state = s;
    $("intro").hidden = s !== "intro";
    $("trial").hidden = !(s === "loading" || s === "stimulus" || s === "question");
    $("done").hidden = s !== "done";
    $("question").hidden = s !== "question";
    $("wait").hidden = s !== "loading";
    $("stage").classList.toggle("hidden-images", s !== "stimulus");
    $("choose-left").disabled = $("choose-right").disabled = s !== "question";
  }

  function fail(msg) {
    $("error").textContent = msg;
    $("error").hidden = false;
  }

  function load(img, url) {
    return new Promise((resolve, reject) => {
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("could not load " + url));
      img.src = url;
    });
  }

  async function nextTrial() {
    setState("loading");
    try {
      const r = await fetch("/api/trial?rater=" + encodeURIComponent(rater), { cache: "no-store" });
      if (!r.ok) throw new Error("server answered " + r.status);
      trial = await r.json();
      $("progress").textContent = "Trial " + trial.index + " of " + trial.total;
      const l = $("left-img"), rt = $("right-img");
      await Promise.all([load(l, trial.left_url), load(rt, trial.right_url)]);
      window.__turing.shown.push([trial.trial_id, l.naturalWidth, l.naturalHeight, rt.naturalWidth, rt.naturalHeight]);
      setState("stimulus");
      setTimeout(() => {
        $("left-img").removeAttribute("src");
        $("right-img").removeAttribute("src");
        askedAt = performance.now();
        setState("question");
      }, trial.seconds * 1000);
    } catch (e) {
      fail("Could not load the next trial: " + e.message);
    }
  }

  async function answer(side) {
    if (busy || document.body.dataset.state !== "question" || !trial) return;
    busy = true;
    const ms = Math.round(performance.now() - askedAt);
    setState("loading");
    try {
      const r = await fetch("/api/answer", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ rater: rater, trial_id: trial.trial_id, chose: side, response_ms: ms }),
      });
      const reply = await r.json();
      if (!r.ok || !reply.ok) throw new Error(reply.error || ("server answered " + r.status));
      window.__turing.answered += 1;
      if (reply.done) setState("done"); else await nextTrial();
    } catch (e) {
      fail("Your answer could not be saved: " + e.message);
    } finally {
      busy = false;
    }
  }

  $("start").addEventListener("click", nextTrial);
  $("again").addEventListener("click", nextTrial);
  $("choose-left").addEventListener("click", () => answer("left"));
  $("choose-right").addEventListener("click", () => answer("right"));
  document.addEventListener("keydown", (ev) => {
    const k = ev.key.toLowerCase();
    if (k === "f" || k === "arrowleft") answer("left");
    else if (k === "j" || k === "arrowright") answer("right");
  });
  setState("intro");
})();
