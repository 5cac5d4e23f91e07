# Sourced by .ci/run: the packages the container platform tests need. Nothing is started here: the fixtures in
# tests/platforms/dockerd.py start private dockerd and Podman daemons of their own and remove them afterwards.
_ecliptic_container_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v podman >/dev/null 2>&1 || missing+=(podman)
  # The test image is made from this busybox alone, so it must be the static one.
  dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}
printf '\n== %s (%s)\n' "Docker, Podman and a static busybox for the container platform tests" "$(date -u +%H:%M:%S)"
_ecliptic_container_packages
unset -f _ecliptic_container_packages
