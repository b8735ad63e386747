#!/usr/bin/env bash
# Builds, from Debian's packages only, the base images that docker/Dockerfile and
# docker/compose.yaml name, under exactly the tags they use. This is for machines that cannot
# pull from a registry (no Docker Hub). With a registry you need none of this: `docker compose`
# pulls the same tags.
#
#   debian:bookworm-slim      debootstrap (minbase) of bookworm + bookworm-updates +
#                             bookworm-security, slimmed like the official image (no docs, man
#                             pages or locales; apt lists cleaned), then `docker import`.
#   prom/prometheus:v2.42.0   FROM that base, with Debian's `prometheus` package (2.42.0, the
#                             same release as the upstream tag), laid out like the upstream
#                             image (wget for health checks, as busybox has it upstream):
#                             ENTRYPOINT /bin/prometheus (bookworm's merged /usr makes
#                             that /usr/bin/prometheus; elsewhere a symlink is added), config in
#                             /etc/prometheus/prometheus.yml, data in /prometheus, user nobody,
#                             port 9090.
#
# Idempotent: a tag that `docker image inspect` already finds is left alone (FORCE=1 rebuilds).
# Needs root (debootstrap) and a Debian mirror (DEBIAN_MIRROR, default deb.debian.org).
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_TAG=debian:bookworm-slim
PROMETHEUS_TAG=prom/prometheus:v2.42.0
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
FORCE=${FORCE:-0}
# Builds are long on small machines; keep them out of the way of everything else.
NICE="nice -n 19"

have() { [ "$FORCE" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

build_debian() {
  if have "$DEBIAN_TAG"; then
    echo "$DEBIAN_TAG: already there"
    return
  fi
  command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; }
  local root
  root=$(mktemp -d /var/tmp/flowscore-rootfs.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$root'" RETURN
  echo "$DEBIAN_TAG: debootstrap into $root"
  $NICE debootstrap --variant=minbase --components=main bookworm "$root" "$MIRROR"

  # What the official slim image carries: no docs, man pages or translations from later
  # installs, apt lists cleaned after every install, no service starts inside containers.
  mkdir -p "$root/etc/dpkg/dpkg.cfg.d" "$root/etc/apt/apt.conf.d"
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'APT::AutoRemove::SuggestsImportant "false";' >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod +x "$root/usr/sbin/policy-rc.d"
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # Point releases and security fixes, as the official image has them.
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  $NICE chroot "$root" apt-get update -q
  DEBIAN_FRONTEND=noninteractive $NICE chroot "$root" apt-get -y -q -o Dpkg::Options::=--force-confold dist-upgrade
  chroot "$root" apt-get clean

  # Slim down what debootstrap installed before the dpkg excludes existed.
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$root"/usr/share/{man,info,groff,lintian,linda}/* "$root"/var/cache/man/*
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/* "$root"/root/.bash_history
  : >"$root/etc/resolv.conf"
  : >"$root/etc/hostname"
  : >"$root/etc/machine-id" 2>/dev/null || true

  echo "$DEBIAN_TAG: docker import"
  tar --numeric-owner -C "$root" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . |
    docker import \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'CMD ["bash"]' \
      -m "debootstrap bookworm (minbase, slimmed) by scripts/docker-base-images.sh" \
      - "$DEBIAN_TAG"
}

build_prometheus() {
  if have "$PROMETHEUS_TAG"; then
    echo "$PROMETHEUS_TAG: already there"
    return
  fi
  echo "$PROMETHEUS_TAG: Debian's prometheus package on $DEBIAN_TAG"
  # The layout of the upstream image, so compose.yaml works unchanged with the real one.
  $NICE docker build -t "$PROMETHEUS_TAG" - <<EOF
FROM $DEBIAN_TAG
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus wget \\
 && rm -rf /var/lib/apt/lists/* \\
 && { [ -e /bin/prometheus ] || ln -s /usr/bin/prometheus /bin/prometheus; } \\
 && { [ -e /bin/promtool ] || ln -s /usr/bin/promtool /bin/promtool; } \\
 && mkdir -p /prometheus
RUN chown -R nobody:nogroup /prometheus /etc/prometheus
USER nobody
EXPOSE 9090
VOLUME ["/prometheus"]
WORKDIR /prometheus
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
LABEL org.opencontainers.image.description="Debian bookworm's prometheus package, laid out like prom/prometheus (built locally by scripts/docker-base-images.sh)"
EOF
}

build_debian
build_prometheus
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^(${DEBIAN_TAG}|${PROMETHEUS_TAG})  " || true
