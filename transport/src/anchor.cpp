void troupe_transport_anchor() {}
