#!/usr/bin/env bash
# mmdebstrap --customize-hook for the lab VM image: runs on the host with the root filesystem
# as $1, after every package is installed. (The files of rootfs/ were copied in before the
# packages, so the kernel's initramfs already has the virtio drivers.)
set -euo pipefail
root=$1

in_root() { chroot "$root" "$@"; }

in_root systemctl enable --quiet anycast-lab-net.service anycast-lab-ready.service

# Nothing periodic may wake up during a test run on an emulated CPU.
in_root systemctl mask --quiet \
    apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer dpkg-db-backup.timer \
    systemd-timesyncd.service getty@tty1.service

# The journal in memory only: fewer writes to the copy-on-write overlay.
mkdir -p "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' >"$root/etc/systemd/journald.conf.d/anycast-lab.conf"

# Root logs in with the per-lab key only; a neutral hostname until anycast-lab-net sets one.
in_root passwd --quiet --lock root
echo anycast-lab >"$root/etc/hostname"
: >"$root/etc/fstab"

# Package archives are not needed at run time; the apt lists stay, so that the roles' apt
# tasks can confirm a package is present without reaching a registry.
rm -rf "$root"/var/cache/apt/archives/*.deb
