# Sourced by .ci/run from the project root: the real Rucio server the Rucio staging tests start
# (tests/staging/rucio_server.py) lives in a venv of its own, because rucio pins too much to share the
# project's. Made once in a cache outside the checkout, kept between runs; remade if it does not hold the
# pinned version.
rucio_version="41.5.1"
rucio_venv="${ECLIPTIC_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ecliptic-ci}/venv-rucio-$rucio_version"
if ! "$rucio_venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('rucio') != '$rucio_version')" 2>/dev/null; then
  rm -rf "$rucio_venv"
  mkdir -p "$(dirname "$rucio_venv")"
  python3 -m venv "$rucio_venv"
  "$rucio_venv/bin/pip" install -q --disable-pip-version-check "rucio==$rucio_version"
fi
export ECLIPTIC_TEST_RUCIO_PYTHON="$rucio_venv/bin/python"
unset rucio_version rucio_venv
