#!/usr/bin/env python3
"""Load generator for the compose test: submits COUNT messages with smtplib
(STARTTLS + AUTH) over THREADS connections, retrying a message on temporary
failures as a real client would. Prints "OK <n>" once per accepted message
(flushed, so a caller can follow progress) and "FAIL <n> <why>" for a message
that could not be submitted within its tries.

  send.py HOST PORT CA USER PASSWORD TO PREFIX COUNT THREADS
"""
import smtplib, ssl, sys, threading, time
from email.message import EmailMessage

host, port, ca, user, password, to, prefix = sys.argv[1:8]
count, threads = int(sys.argv[8]), int(sys.argv[9])
port = int(port)
ctx = ssl.create_default_context(cafile=ca)
lock = threading.Lock()
todo = list(range(count))

def out(line):
    with lock:
        print(line, flush=True)

def connect():
    s = smtplib.SMTP(host, port, timeout=60)
    s.ehlo("loadgen.test")
    s.starttls(context=ctx)
    s.ehlo("loadgen.test")
    s.login(user, password)
    return s

def worker():
    s = None
    while True:
        with lock:
            if not todo:
                break
            n = todo.pop(0)
        msg = EmailMessage()
        msg["From"] = user
        msg["To"] = to
        msg["Subject"] = f"{prefix} {n}"
        msg.set_content(f"message {n} of {count}\n")
        for attempt in range(30):
            try:
                if s is None:
                    s = connect()
                s.send_message(msg)
                out(f"OK {n}")
                break
            except (smtplib.SMTPException, OSError) as e:
                why = repr(e)
                try:
                    s and s.close()
                except Exception:
                    pass
                s = None
                time.sleep(1)
        else:
            out(f"FAIL {n} {why}")
    if s is not None:
        try:
            s.quit()
        except Exception:
            pass

ts = [threading.Thread(target=worker) for _ in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
