"""What a big reload costs other requests: `python3 benches/reload-big/probe.py BINARY`.

Starts BINARY with 10,000 guarded routes and 1,000 flags on one worker (ports 18181, 18182,
upstream 18190), lets its start-up pass, sends sequential requests across all routes from one
client, rewrites the config four times 8 s apart, and prints the slowest request and p99 of
each 8 s after a rewrite against those before the first. Client, upstream and proxy share the
machine: read the numbers against the "before reloads" line, which is this harness's own noise.
"""
import os, time, subprocess, sys, http.client, threading, tempfile

def probe(stop, lat):
    c = http.client.HTTPConnection('127.0.0.1', 18181)
    i = 0
    while not stop.is_set():
        t = time.monotonic()
        c.request('GET', f'/r{i % 10000}/x', headers={'x-user-id': f'u{i}'})
        r = c.getresponse(); r.read()
        lat.append((t, time.monotonic() - t))
        i += 1

here = os.path.dirname(os.path.abspath(__file__))
work = tempfile.mkdtemp()
config = os.path.join(work, 'big.toml')
up = subprocess.Popen(['python3', os.path.join(here, 'upstream.py')])
binary = sys.argv[1]
subprocess.run(['python3', os.path.join(here, 'gen.py'), config, '10'])
p = subprocess.Popen([binary, 'run', '--config', config, '--workers', '1'], stderr=open(os.path.join(work, 'proxy.log'), 'w'))
time.sleep(25)
stop = threading.Event(); lat = []
th = threading.Thread(target=probe, args=(stop, lat)); th.start()
time.sleep(3)
marks = []
for k in range(4):
    marks.append(time.monotonic())
    subprocess.run(['python3', os.path.join(here, 'gen.py'), config, str(11 + k)])
    time.sleep(8)
stop.set(); th.join(); p.terminate(); p.wait(); up.terminate()
base = sorted(l for t, l in lat if t < marks[0])
print(f'requests {len(lat)}; before reloads: p50 {base[len(base)//2]*1000:.2f} ms, p99 {base[int(len(base)*.99)]*1000:.2f} ms, max {base[-1]*1000:.2f} ms')
for m in marks:
    during = sorted(l for t, l in lat if m <= t < m + 8)
    worst = max((l, t) for t, l in lat if m <= t < m + 8)
    print(f'reload: max {worst[0]*1000:.1f} ms at +{worst[1]-m:.2f} s, p99 {during[int(len(during)*.99)]*1000:.2f} ms, n {len(during)}')
