void troupe_actors_anchor() {}
