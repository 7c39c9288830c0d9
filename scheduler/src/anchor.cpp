void troupe_scheduler_anchor() {}
