"""Writes a config of 10,000 guarded routes and 1,000 flags to ARGV[1] (atomically, by
rename); ARGV[2] is the green weight of route r5000, so each call with a new value is a change."""
import os, sys
n_routes, n_flags = 10000, 1000
out = ['[listen]\nhttp = "127.0.0.1:18181"\n[admin]\nlisten = "127.0.0.1:18182"\n[log]\naccess = false\n[identity]\nfrom = ["header:x-user-id"]\n',
       '[pools.blue]\nendpoints = ["127.0.0.1:18190"]\n[pools.green]\nendpoints = ["127.0.0.1:18190"]\n']
path = sys.argv[1]
w = int(sys.argv[2]) if len(sys.argv) > 2 else 10
for i in range(n_routes):
    g = w if i == 5000 else 10
    out.append(f'[[routes]]\nname = "r{i}"\npath_prefix = "/r{i}/"\nsplit = {{ blue = {100-g}, green = {g} }}\nguard = {{ baseline = "blue" }}\n')
for i in range(n_flags):
    out.append(f'[[flags]]\nname = "f{i}"\npercent = 50\n')
open(path + '.tmp', 'w').write(''.join(out))
os.rename(path + '.tmp', path)
