// A private PostgreSQL 15 cluster under Yilian's data directory: initialised on first use,
// started on a unix socket only (no TCP port, so it never collides with a system server on 5432),
// and stopped on shutdown. When Yilian runs as root, the cluster runs as the `postgres` system
// user (PostgreSQL refuses root).
#pragma once

#include <filesystem>
#include <string>

namespace yilian::gateway {

struct embedded_postgres_options {
  std::filesystem::path data_dir;     // Yilian's data directory; the cluster lives in data_dir/postgres
  std::string database = "yilian";
  std::string bin_dir;                // empty = find pg_ctl/initdb (/usr/lib/postgresql/15/bin, PATH)
};

class embedded_postgres {
 public:
  explicit embedded_postgres(embedded_postgres_options options);
  ~embedded_postgres();  // stops the cluster if this object started it
  embedded_postgres(const embedded_postgres&) = delete;
  embedded_postgres& operator=(const embedded_postgres&) = delete;

  // Takes the data directory's lock (a second Yilian on the same directory fails with a clear
  // message), runs initdb the first time, starts the server and creates the database.
  // Throws std::runtime_error with an actionable message on failure.
  void start();
  // Fast shutdown (pg_ctl stop -m fast); idempotent.
  void stop();
  bool running() const noexcept { return started_; }
  // Leaves the cluster running when this object is destroyed (`yilian postgres start`, used by
  // the test harness); `stop_cluster` stops it later.
  void detach() noexcept { detached_ = true; }

  // libpq connection URL for the database ("postgresql:///yilian?host=/path/to/socket&port=N").
  std::string url() const;
  std::string url_for(std::string_view database) const;

  // Stops a cluster started by another process (`yilian postgres stop`).
  static void stop_cluster(const std::filesystem::path& data_dir);

 private:
  embedded_postgres_options options_;
  std::filesystem::path cluster_dir_;
  std::filesystem::path socket_dir_;
  int port_ = 0;
  int lock_fd_ = -1;
  bool started_ = false;
  bool detached_ = false;
};

}  // namespace yilian::gateway
