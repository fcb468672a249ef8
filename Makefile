# ngx_http_websocket_module: build, run and test.
#
#   make          build nginx (vendored source) and the module
#   make run      build, then serve conf/nginx.conf on 127.0.0.1:8080
#   make test     install what is missing (as root), then run every test:
#                 unit, fuzz-smoke, integration, test-deb, autobahn
#   make -s paths print the nginx binary and module paths
#   make autobahn run the Autobahn|Testsuite (cases 1-10, a subset of 12/13) against the module
#   make autobahn-full  all of cases 1-10, 12 and 13 (30-45 minutes on 2 cores)
#   make distro   build the module against the system's packaged nginx (Debian's
#                 nginx-dev, installed as root) into target/distro/
#   make test-distro  run the integration suite against /usr/sbin/nginx with it
#   make deb      the Debian package libnginx-mod-http-websocket_<version>_amd64.deb
#                 (debhelper, debian/; lintian clean) into target/deb/
#   make test-deb as root on Debian (skipped elsewhere): apt-get install the package,
#                 check nginx loads it through modules-enabled, run nginx-tests/ and
#                 Autobahn 1-10 against /usr/sbin/nginx with it, remove and purge it
#   make bench    benchmarks side by side (bench/run.sh), results in bench/results/
#   make bench-fanout  channel fan-out against nchan (bench/fanout.sh)
#   make soak     SOAK_MINUTES (10) of 10,000 sessions: RSS, descriptors, no message lost
#   make fuzz     fuzz the protocol code (FUZZ_SECONDS per target, default 300)
#   make fuzz-smoke  the same for FUZZ_SMOKE_SECONDS (30) per target; in make test
#   make test-valgrind  nginx-tests/ with nginx under valgrind memcheck (a build of its
#                 own in target/memcheck/, NGX_DEBUG_PALLOC); fails on any error
#   make test-asan  nginx-tests/ against nginx + module built with AddressSanitizer
#                 (target/asan/); fails on any ASan error or LeakSanitizer leak

CARGO    ?= cargo
PROFILE  ?= release
TARGET   := $(CURDIR)/target/$(PROFILE)
MODULE   := $(TARGET)/ngx_http_websocket_module.so
RUN_DIR  := $(CURDIR)/target/run

APT_PACKAGES := libssl-dev libpcre2-dev zlib1g-dev libclang-dev clang pkg-config make perl openssl \
                chromium redis-server
PY_PACKAGES  := websockets

.PHONY: all build examples run test unit integration autobahn autobahn-full deps paths clippy clean distro \
	test-distro deb test-deb bench bench-fanout fuzz fuzz-smoke memcheck-build test-valgrind asan-build test-asan soak \
	redis-probe-paths

all: build examples

# The examples (examples/*), each a module of its own written against the
# crate's public API; built apart from the module, as a dependent builds.
EXAMPLES := ngx-websocket-example-chat ngx-websocket-example-client
examples:
	$(CARGO) build --profile $(PROFILE) --locked $(addprefix -p ,$(EXAMPLES))

build:
	$(CARGO) build --profile $(PROFILE) --locked
	@# A new inode: overwriting the file in place would crash a running nginx.
	cp -f $(TARGET)/libngx_http_websocket_module.so $(MODULE).tmp
	mv -f $(MODULE).tmp $(MODULE)

# The module with a second, test-only nginx module that puts the Redis client
# on an HTTP location (cargo feature redis-probe, src/redis/probe.rs), for
# nginx-tests/63-redis-client.t; built in target/redis-probe/ (never the
# module that ships), brought up to date on each call, paths printed as by
# `make -s paths`.
REDIS_PROBE_DIR := $(CURDIR)/target/redis-probe
redis-probe-paths:
	@CARGO_TARGET_DIR=$(REDIS_PROBE_DIR) $(CARGO) build --profile $(PROFILE) --locked \
		--features redis-probe >&2
	@cmp -s $(REDIS_PROBE_DIR)/$(PROFILE)/libngx_http_websocket_module.so \
		$(REDIS_PROBE_DIR)/ngx_http_websocket_module.so || { \
		cp -f $(REDIS_PROBE_DIR)/$(PROFILE)/libngx_http_websocket_module.so \
			$(REDIS_PROBE_DIR)/ngx_http_websocket_module.so.tmp && \
		mv -f $(REDIS_PROBE_DIR)/ngx_http_websocket_module.so.tmp \
			$(REDIS_PROBE_DIR)/ngx_http_websocket_module.so; }
	@echo "nginx=$$(cat $(REDIS_PROBE_DIR)/$(PROFILE)/nginx-path)"
	@echo "module=$(REDIS_PROBE_DIR)/ngx_http_websocket_module.so"

paths:
	@test -f $(MODULE) -a -f $(TARGET)/nginx-path || $(MAKE) --no-print-directory build >&2
	@echo "nginx=$$(cat $(TARGET)/nginx-path)"
	@echo "module=$(MODULE)"

run: build
	@mkdir -p $(RUN_DIR)/logs $(RUN_DIR)/modules
	@ln -sfn $(MODULE) $(RUN_DIR)/modules/ngx_http_websocket_module.so
	@ln -sfn $(CURDIR)/conf/html $(RUN_DIR)/html
	@echo "echo:   ws://127.0.0.1:8080/echo"
	@echo "proxy:  ws://127.0.0.1:8080/proxy (websocket_pass to an echo on 127.0.0.1:8081)"
	@echo "room:   http://127.0.0.1:8080/?endpoint=room in two tabs (websocket_subscribe chat room)"
	@echo "demo:   http://127.0.0.1:8080/"
	@echo "status: http://127.0.0.1:8080/status (websocket_status metrics)"
	@echo "logs:   $(RUN_DIR)/logs/ (error.log, access.log); Ctrl-C stops nginx"
	@# Run as root, nginx's workers are nobody, who cannot enter a checkout in /root or
	@# in a 0700 directory: then the demo's workers stay root to serve the page.
	@workers=""; if [ "$$(id -u)" = 0 ] && \
		! runuser -u nobody -- test -r $(CURDIR)/conf/html/index.html 2>/dev/null; then \
		echo "note:   user nobody cannot read $(CURDIR)/conf/html; the demo's workers run as root"; \
		workers="user root;"; fi; \
	echo "exec $$(cat $(TARGET)/nginx-path) -p $(RUN_DIR)/ -c $(CURDIR)/conf/nginx.conf"; \
	exec $$(cat $(TARGET)/nginx-path) -p $(RUN_DIR)/ -e $(RUN_DIR)/logs/error.log \
		-c $(CURDIR)/conf/nginx.conf -g "daemon off; $$workers"

# Installs the system packages the build and the tests need, when missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "missing packages:$$missing (run as root)"; exit 1; fi; \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@python3 -c 'import websockets' 2>/dev/null || python3 -m pip install -q $(PY_PACKAGES)
	@# The browser test drives Debian's Chromium with playwright-core (Node 20+).
	@test -f browser/node_modules/playwright-core/package.json || \
		npm ci --prefix browser --no-audit --no-fund

unit:
	$(CARGO) test --profile $(PROFILE) --locked --workspace $(addprefix --exclude ,$(EXAMPLES))
	tools/import-graph.sh
	CARGO=$(CARGO) PROFILE=$(PROFILE) tools/check-dependent.sh
	@# The public API's documentation: no warning (missing_docs is denied).
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --profile $(PROFILE) --locked --no-deps -p ngx_http_websocket_module -p ngx-websocket-protocol

# Twice: then again with the access log off, where sessions run without
# their HTTP request once upgraded (config, interop and browser tests
# have nothing to add there).
DETACHED_TESTS := $(filter-out nginx-tests/00-% nginx-tests/13-% nginx-tests/30-%,$(wildcard nginx-tests/*.t))
integration: build examples
	prove -r nginx-tests/
	TEST_NGINX_ACCESS_LOG=off prove $(DETACHED_TESTS)

# The Autobahn|Testsuite fuzzing client against websocket_echo,
# websocket_pass -> websocket_echo and websocket_subscribe with publish on (one
# subscriber per channel: an echo) (websocket_deflate on): cases 1-10 and, of
# the compression cases 12/13, the smallest message and the fragmented one of
# each data set and parameter set (48 cases). autobahn-full: all of 12 and 13.
AUTOBAHN_DIR   := $(CURDIR)/target/autobahn
AUTOBAHN_BASE  := 1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*
AUTOBAHN_DEFLATE_SUBSET := $(foreach j,1 2 3 4 5,12.$(j).1,12.$(j).11,)$(foreach j,1 2 3 4 5 6 7,13.$(j).1,13.$(j).11,)
AUTOBAHN_CASES := $(AUTOBAHN_BASE),$(AUTOBAHN_DEFLATE_SUBSET)
autobahn: build
	autobahn/install.sh $(AUTOBAHN_DIR)
	autobahn/against-nginx.sh $(AUTOBAHN_DIR)/py2/bin/wstest $(AUTOBAHN_DIR)/report '$(AUTOBAHN_CASES)'

autobahn-full: build
	autobahn/install.sh $(AUTOBAHN_DIR)
	autobahn/against-nginx.sh $(AUTOBAHN_DIR)/py2/bin/wstest $(AUTOBAHN_DIR)/report-full \
		'$(AUTOBAHN_BASE),12.*,13.*'

test: deps build unit fuzz-smoke integration test-deb autobahn

# Debian's nginx-dev: configure its source with Debian's flags, build without the
# vendored nginx (target/distro/, never touches target/$(PROFILE)).
distro:
	distro/build.sh

test-distro:
	distro/test.sh

# The Debian package, built with debhelper from debian/ around the module
# distro/build.sh built (distro/deb.sh); output in target/deb/.
deb:
	distro/deb.sh

# The package installed with apt, tested in place and purged (distro/test-deb.sh):
# 3-5 minutes here, most of it nginx-tests/ and Autobahn cases 1-10.
test-deb:
	AUTOBAHN_CASES='$(AUTOBAHN_BASE)' distro/test-deb.sh

# Side-by-side benchmarks (not in make test): see bench/README.md.
bench: build
	bench/deps.sh
	bench/run.sh

# Channel fan-out side by side with nchan on Debian's nginx (bench/fanout.sh).
bench-fanout:
	bench/deps.sh
	bench/fanout.sh

# SOAK_MINUTES (10) of 10,000 concurrent sessions, half echo, half pass -> echo,
# plus a churn of short ones; fails on RSS growth over 5 % after the first
# minute, descriptors not back to the baseline, a message lost or reordered,
# or an [alert] (bench/soak.sh; not in make test). Curve: target/soak/curve.tsv.
soak: build
	bench/soak.sh

# Coverage-guided fuzzing of the protocol code, FUZZ_SECONDS per target
# (default 300).
fuzz:
	fuzz/run.sh

# The same, FUZZ_SMOKE_SECONDS (30) per target, in make test: about 3 min with
# the targets built, under 5 min from a clean state (installing cargo-fuzz ~70 s,
# building the targets ~50 s).
FUZZ_SMOKE_SECONDS ?= 30
fuzz-smoke:
	fuzz/run.sh $(FUZZ_SMOKE_SECONDS)

# nginx-tests/ with every nginx (master, workers, nginx -t) under valgrind's
# memcheck: see nginx-tests/lib/WsValgrind.pm. Against a build of its own in
# target/memcheck/: nginx compiled with NGX_DEBUG_PALLOC (each pool allocation
# is a malloc of its own, so memcheck sees overruns and use after free inside
# pools) and the module with debug info. Waits of the harness are 5 times
# longer (TEST_NGINX_SLOWDOWN). Fails on any memcheck error not suppressed by
# valgrind/nginx.supp (nginx's own exit-time leaks, each with its reason);
# per-process logs in target/memcheck/logs/, summary (valgrind/report.py) in
# target/memcheck/summary.txt. About 3 minutes here.
MEMCHECK_DIR := $(CURDIR)/target/memcheck
memcheck-build:
	NGX_CFLAGS='-DNGX_DEBUG_PALLOC=1' CARGO_PROFILE_RELEASE_DEBUG=1 CARGO_TARGET_DIR=$(MEMCHECK_DIR) \
		$(CARGO) build --release --locked
	cp -f $(MEMCHECK_DIR)/release/libngx_http_websocket_module.so $(MEMCHECK_DIR)/ngx_http_websocket_module.so.tmp
	mv -f $(MEMCHECK_DIR)/ngx_http_websocket_module.so.tmp $(MEMCHECK_DIR)/ngx_http_websocket_module.so

test-valgrind: deps memcheck-build
	@command -v valgrind >/dev/null || { \
		if [ "$$(id -u)" != 0 ]; then echo "valgrind is missing (run as root)"; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; }
	rm -rf $(MEMCHECK_DIR)/logs
	@rc=0; TEST_NGINX_BINARY=$$(cat $(MEMCHECK_DIR)/release/nginx-path) \
		TEST_NGINX_MODULE=$(MEMCHECK_DIR)/ngx_http_websocket_module.so \
		TEST_NGINX_VALGRIND=1 TEST_NGINX_VALGRIND_DIR=$(MEMCHECK_DIR)/logs \
		prove -r nginx-tests/ || rc=1; \
	valgrind/report.py $(MEMCHECK_DIR)/logs >$(MEMCHECK_DIR)/summary.txt || rc=1; \
	cat $(MEMCHECK_DIR)/summary.txt; exit $$rc

# The same suite against nginx and the module built with AddressSanitizer
# (gcc -fsanitize=address for nginx, rustc -Zsanitizer=address for the module
# through RUSTC_BOOTSTRAP, NGX_DEBUG_PALLOC) in target/asan/; LeakSanitizer
# checks every nginx at exit (valgrind/lsan.supp: nginx's exit-time leaks).
# Waits are twice as long. Reports in target/asan/logs/, summary in
# target/asan/summary.txt. About 2.5 minutes, plus a 5-minute first build.
ASAN_DIR    := $(CURDIR)/target/asan
ASAN_TRIPLE := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
asan-build:
	NGX_CFLAGS='-fsanitize=address -fno-omit-frame-pointer -DNGX_DEBUG_PALLOC=1' \
	NGX_LDFLAGS='-fsanitize=address' RUSTC_BOOTSTRAP=1 \
	RUSTFLAGS='-Zsanitizer=address -Cforce-frame-pointers=yes' \
	CARGO_PROFILE_RELEASE_DEBUG=1 CARGO_TARGET_DIR=$(ASAN_DIR) \
		$(CARGO) build --release --locked --target $(ASAN_TRIPLE)
	cp -f $(ASAN_DIR)/$(ASAN_TRIPLE)/release/libngx_http_websocket_module.so $(ASAN_DIR)/ngx_http_websocket_module.so.tmp
	mv -f $(ASAN_DIR)/ngx_http_websocket_module.so.tmp $(ASAN_DIR)/ngx_http_websocket_module.so

test-asan: deps asan-build
	rm -rf $(ASAN_DIR)/logs
	@rc=0; TEST_NGINX_BINARY=$$(cat $(ASAN_DIR)/$(ASAN_TRIPLE)/release/nginx-path) \
		TEST_NGINX_MODULE=$(ASAN_DIR)/ngx_http_websocket_module.so \
		TEST_NGINX_ASAN=1 TEST_NGINX_VALGRIND_DIR=$(ASAN_DIR)/logs \
		prove -r nginx-tests/ || rc=1; \
	valgrind/report.py --asan $(ASAN_DIR)/logs >$(ASAN_DIR)/summary.txt || rc=1; \
	cat $(ASAN_DIR)/summary.txt; exit $$rc

clippy:
	$(CARGO) clippy --profile $(PROFILE) --locked --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
