# deploy/deps.sh — sourced by run.sh and test.sh: installs, from Debian's packages, only
# what is missing. Idempotent; needs root (or sudo) only when something is missing.
moat_build_packages=(build-essential cmake ninja-build pkg-config ccache
  libuv1-dev libssl-dev libc-ares-dev libtomlplusplus-dev libre2-dev libclamav-dev
  libopendkim-dev libpsl-dev libidn2-dev publicsuffix libpcre2-dev libcrypt-dev zlib1g-dev)
# Real peers and servers the test suite talks to over loopback; fail2ban and prometheus for
# fail2ban-regex and promtool, which check deploy/monitoring/ (their services are not run);
# dovecot-lmtpd for the LMTP peer tests/integration/test_lmtp.py runs on its own config.
moat_test_packages=(catch2 python3 python3-yaml python3-dnslib python3-dkim python3-spf
  swaks postfix openssl opendkim-tools clang libclang-rt-14-dev spamassassin clamav-daemon
  fail2ban prometheus python3-milter dovecot-core dovecot-lmtpd)

moat_install_missing() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "moat: installing ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # postfix asks a debconf question; the test suite only uses its smtp-source/smtp-sink.
  echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections 2>/dev/null || true
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
