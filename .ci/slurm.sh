# Sourced by .ci/run: Debian's Slurm and munge packages for the Slurm platform's tests.
# Nothing is started here: tests/platforms/slurm_cluster.py starts a private cluster (munged, slurmctld,
# slurmd, slurmrestd) per test process, on free loopback ports and unix sockets, and stops it afterwards.
printf '\n== %s (%s)\n' "Slurm: slurmctld, slurmd, slurm-client, munge, slurmrestd" "$(date -u +%H:%M:%S)"
ecliptic_slurm_missing=()
for ecliptic_slurm_package in slurmctld slurmd slurm-client munge slurmrestd; do
  if ! dpkg-query -W -f='${Status}' "$ecliptic_slurm_package" 2>/dev/null | grep -q 'install ok installed'; then
    ecliptic_slurm_missing+=("$ecliptic_slurm_package")
  fi
done
if [ "${#ecliptic_slurm_missing[@]}" -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${ecliptic_slurm_missing[@]}" >/dev/null
fi
unset ecliptic_slurm_missing ecliptic_slurm_package
