"""Spam scoring: the reference's "Spam filtering > Basic spam filter" in Python.

Score >= 2 -> the message is refused in-session (550 5.7.1 with the first reason);
otherwise it is forwarded with X-Spam-Score / X-Spam-Reasons / X-Spam-Check-Time.

    handlers:
      registry:
        - name: spam
          target: examples/handlers/spam_filter.py
          vars: ["INBOX=inbox@example.com", "TRUSTED_DOMAINS=example.com,vendor.net"]
"""

import time

SPAM_KEYWORDS = ["buy now", "limited time", "act fast", "click here", "free money",
                 "guaranteed", "risk free", "urgent", "winner", "congratulations",
                 "inheritance", "lottery"]


def check_spam(message, trusted):
    score, reasons = 0, []
    sender = message.from_
    subject = message.headers.get("subject") or ""
    if sender.rpartition("@")[2].lower() in trusted:
        score -= 2
    lowered = subject.lower()
    for keyword in SPAM_KEYWORDS:
        if keyword in lowered:
            score += 1
            reasons.append(f"Spam keyword: {keyword}")
    letters = sum(1 for c in subject if c.isalpha())
    if letters and len(subject) > 10 and \
            sum(1 for c in subject if c.isupper()) / len(subject) > 0.7:
        score += 1
        reasons.append("Excessive capitalization")
    if "!!!" in subject or "$$$" in subject:
        score += 1
        reasons.append("Suspicious punctuation")
    if "noreply" in sender and "urgent" in lowered:
        score += 2
        reasons.append("Suspicious noreply + urgent combination")
    return score >= 2, score, reasons


async def email(message, env, ctx):
    started = time.monotonic()
    trusted = {d.strip().lower() for d in env.get("TRUSTED_DOMAINS", "").split(",") if d}
    is_spam, score, reasons = check_spam(message, trusted)
    if is_spam:
        message.set_reject(f"Message rejected: {reasons[0]}")
        return
    await message.forward(env.INBOX, {
        "X-Spam-Score": str(score),
        "X-Spam-Reasons": ", ".join(reasons) or "none",
        "X-Spam-Check-Time": str(int((time.monotonic() - started) * 1000)),
    })
