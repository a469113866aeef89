#!/usr/bin/env bash
# Builds LazyFS (../lazyfs, a power-loss simulator) into OUT_DIR and prints the binary's path.
# Needs root for apt-get (cmake, fuse3, libfuse3-dev, libspdlog-dev, libtoml11-dev).
# Usage: build-lazyfs.sh OUT_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
if ! dpkg -s cmake fuse3 libfuse3-dev libspdlog-dev libtoml11-dev >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake fuse3 libfuse3-dev libspdlog-dev libtoml11-dev >/dev/null
fi
rm -rf "$out/src" && cp -r "$here/../third_party/lazyfs" "$out/src" && chmod -R u+w "$out/src"
python3 - "$out/src" <<'PY'
import re, sys
src = sys.argv[1]
p = src + "/libs/libpcache/CMakeLists.txt"; s = open(p).read()
s = re.sub(r'include\(FetchContent\)\nFetchContent_Declare\(\n    toml\n.*?FetchContent_MakeAvailable\(spdlog\)\n',
           'find_package(toml11 REQUIRED)\nfind_package(spdlog REQUIRED)\n', s, flags=re.S)
s = s.replace('set_target_properties(spdlog PROPERTIES POSITION_INDEPENDENT_CODE ON)\n', '')
s = s.replace('target_link_libraries(pcache toml11::toml11 spdlog)', 'target_link_libraries(pcache toml11::toml11 spdlog::spdlog)')
open(p, "w").write(s)
p = src + "/lazyfs/CMakeLists.txt"; s = open(p).read()
s = s.replace('link_directories(../libs/libpcache/build/_deps/spdlog-build/)\ninclude_directories(../libs/libpcache/build/_deps/spdlog-src/include)\n',
              'find_package(spdlog REQUIRED)\nfind_package(toml11 REQUIRED)\n')
s = s.replace('target_link_libraries(${CMAKE_PROJECT_NAME} fuse3 Threads::Threads libpcache.so)',
              'target_link_libraries(${CMAKE_PROJECT_NAME} fuse3 Threads::Threads libpcache.so spdlog::spdlog toml11::toml11)')
open(p, "w").write(s)
PY
(cd "$out/src/libs/libpcache" && mkdir -p build && cd build && cmake .. >/dev/null && make -j2 >/dev/null)
(cd "$out/src/lazyfs" && mkdir -p build && cd build && cmake -DLAZYFS_BUILD_TESTS=OFF .. >/dev/null && make -j2 >/dev/null 2>&1)
grep -q '^user_allow_other' /etc/fuse.conf 2>/dev/null || echo user_allow_other >> /etc/fuse.conf
echo "$out/src/lazyfs/build/lazyfs"
