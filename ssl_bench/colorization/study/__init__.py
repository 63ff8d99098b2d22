"""The paper's perceptual real-vs-fake test ("colorization Turing test"), run by people on a local web page.

Serving (``server``). A stdlib ``ThreadingHTTPServer`` bound to 127.0.0.1 serves one page. Each trial
shows a real image and its colorization side by side for a set time (paper: 1 s) in random
left/right order, hides them and asks which one is real (buttons, or the keys F / left arrow and
J / right arrow). The server alone knows which side is real; image URLs are opaque random names.

Sentinels (``images``). About a tenth of the trials (paper: ~10%) show the ground truth next to the
same image in *random colours*: its L channel with the ab channels of another randomly chosen image
of the set (resized to the same 256 x 256 crop); when the set holds a single image, its own ab
rotated in the ab plane by a random hue angle in [90, 270] degrees instead. A rater who gets
sentinels wrong was not paying attention; the analysis drops such raters.

Images (``images``). Prepared once at start-up: every readable image of a folder (recursively) is
resized to a 256 px short side and centre-cropped to 256 x 256 (the paper showed 256 x 256), then
written as PNG three times: ground truth, colorization, sentinel.

Answers (``storage``). Each answer is one INSERT + COMMIT into an SQLite file (WAL mode) as it
arrives, so stopping or killing the server loses nothing; the server's threads share one connection
under the app's lock. Rows: rater (random id kept in the page's
localStorage), session, trial id, image id (path relative to the image folder), method (the
checkpoint's "colorization/<variant>"), is_sentinel, left_is_real, chose_left, correct (chose the
real image), response_ms (from the moment the images were hidden to the click), timestamp (UTC,
ISO 8601).

HTTP API (JSON):
    GET  /                          the page (static files in static/)
    GET  /api/trial?rater=R         next trial {trial_id, left_url, right_url, seconds, index, total}
    POST /api/answer                {rater, trial_id, chose: "left"|"right", response_ms} -> {"ok", "done"}
    GET  /images/<name>.png         a cached PNG (anything but a known plain file name is refused)

Refusals (``payload``) are JSON {"ok": false, "error", "field"}: 400 for a rater or trial id that is
not 1-64 characters of [A-Za-z0-9_-] (a trailing newline included), a choice other than left/right,
a response time that is not a finite number >= 0 (NaN / Infinity literals refused), or a body that
is not a JSON object nested at most 4 deep; 413 for a body over 10,000 bytes. An answer the log
could not store is rolled back, logged and answered 500; the trial stays open for a retry.

A session is a fixed number of trials (paper: 40; sentinels mixed in at random positions); a rater
asking for a trial after finishing a session starts a new one.

Results (``analysis``). "% labelled real": over the method's (non-sentinel) trials of the kept
raters, the share in which the rater chose the colorization as the real image (pooled over trials);
its standard error is a bootstrap over raters (raters resampled with replacement, 1000 draws, fixed
seed). Raters whose sentinel accuracy is below a threshold (paper: all sentinels right, 1.0) are
excluded; so are raters who answered no sentinel at all, unless the threshold is 0.
"""

from ssl_bench.errors import ConfigError


class UserError(ConfigError):
    """Bad input from the person running the study (reported in one line, exit code 2)."""
