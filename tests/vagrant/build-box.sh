#!/usr/bin/env bash
# Builds the offline Debian 12 Vagrant box for libvirt used by scripts/vagrant-test.sh on
# machines that cannot download a box (no Vagrant registry) and have no KVM: debootstrap
# from the Debian mirror, no bootloader (the Vagrantfile boots the kernel and initrd that
# this script copies out next to the box), everything the scenario needs baked in because
# the VMs have no route to a mirror. Needs root. Usage: build-box.sh CACHE_DIR
# Produces CACHE_DIR/weft-debian12.box, CACHE_DIR/vmlinuz, CACHE_DIR/initrd.img.
# Only touches CACHE_DIR. debootstrap mounts /proc and /sys inside the rootfs while it
# runs: it runs in a private mount namespace (no mount can outlive it), and the rootfs is
# imaged and deleted only after checking that nothing is mounted under it.
set -euo pipefail
CACHE=${1:?usage: build-box.sh CACHE_DIR}
MIRROR=${WEFT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=systemd-sysv,udev,kmod,openssh-server,sudo,iproute2,ifupdown,isc-dhcp-client,linux-image-amd64,python3-minimal,iputils-ping,procps,etcd-server,etcd-client,containernetworking-plugins,iptables
mkdir -p "$CACHE"
B=$CACHE/box-build
no_mounts_under() { # deleting or imaging a tree with live mounts under it is never done
    if grep -q " $1" /proc/mounts; then
        echo "build-box: live mounts under $1, refusing to touch it:" >&2
        grep " $1" /proc/mounts >&2
        exit 1
    fi
}
no_mounts_under "$B"
rm -rf "$B"; mkdir -p "$B"
R=$B/rootfs
echo "build-box: debootstrap bookworm ($PACKAGES)"
unshare --mount --propagation private debootstrap --variant=minbase --include="$PACKAGES" bookworm "$R" "$MIRROR" >"$B/debootstrap.log" 2>&1 \
    || { tail -20 "$B/debootstrap.log"; exit 1; }
chroot "$R" useradd -m -s /bin/bash vagrant
echo vagrant:vagrant | chroot "$R" chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD:ALL' >"$R/etc/sudoers.d/vagrant"; chmod 440 "$R/etc/sudoers.d/vagrant"
mkdir -p "$R/home/vagrant/.ssh"
cp /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub "$R/home/vagrant/.ssh/authorized_keys"
chroot "$R" chown -R vagrant:vagrant /home/vagrant/.ssh; chmod 700 "$R/home/vagrant/.ssh"; chmod 600 "$R/home/vagrant/.ssh/authorized_keys"
printf 'auto lo\niface lo inet loopback\nallow-hotplug eth0\niface eth0 inet dhcp\n' >"$R/etc/network/interfaces"
echo '/dev/vda / ext4 defaults 0 1' >"$R/etc/fstab"
: >"$R/etc/machine-id"
echo weft-box >"$R/etc/hostname"
# etcd runs only on the first VM, started by the Vagrantfile's provisioner.
chroot "$R" systemctl disable etcd.service >/dev/null 2>&1 || rm -f "$R/etc/systemd/system/multi-user.target.wants/etcd.service"
# Quicker boots under TCG: no sshd DNS lookups, no waiting for a network that is not there.
echo 'UseDNS no' >>"$R/etc/ssh/sshd_config"
rm -f "$R"/etc/ssh/ssh_host_*            # regenerated per VM at first boot
cat >"$R/etc/systemd/system/ssh-keygen-once.service" <<'UNIT'
[Unit]
Description=Generate SSH host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
UNIT
chroot "$R" systemctl enable ssh-keygen-once.service >/dev/null 2>&1
chroot "$R" apt-get clean
cp "$(ls "$R"/boot/vmlinuz-* | sort -V | tail -1)" "$B/vmlinuz"
cp "$(ls "$R"/boot/initrd.img-* | sort -V | tail -1)" "$B/initrd.img"
echo "build-box: image"
no_mounts_under "$R"
truncate -s 3G "$B/box.raw"
mkfs.ext4 -q -F -L root -d "$R" "$B/box.raw"
qemu-img convert -O qcow2 "$B/box.raw" "$B/box.img"
rm -f "$B/box.raw"
echo '{"provider":"libvirt","format":"qcow2","virtual_size":3}' >"$B/metadata.json"
printf 'Vagrant.configure("2") do |config|\n  config.vm.provider :libvirt do |lv|\n    lv.driver = "qemu"\n  end\nend\n' >"$B/Vagrantfile"
tar -C "$B" -cf "$B/weft-debian12.box" metadata.json Vagrantfile box.img
mv "$B/weft-debian12.box" "$B/vmlinuz" "$B/initrd.img" "$CACHE/"
no_mounts_under "$B"
rm -rf "$B"
echo "build-box: done ($(du -h "$CACHE/weft-debian12.box" | cut -f1))"
