"""The VM provider: Vagrant (VirtualBox or libvirt), SSH through Fabric."""
