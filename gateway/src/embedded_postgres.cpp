// Private PostgreSQL cluster: layout (where the cluster, socket and log live), the data-directory
// lock, running initdb/pg_ctl (as the `postgres` user when we are root) and creating the database.
#include "yilian/gateway/embedded_postgres.hpp"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <pqxx/pqxx>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <vector>

namespace yilian::gateway {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t max_socket_path = 107;  // sizeof(sockaddr_un::sun_path) - 1

std::uint64_t fnv1a(std::string_view s) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string hex16(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// The system user that runs PostgreSQL when we are root.
struct run_as {
  uid_t uid;
  gid_t gid;
  std::string name;
};

std::optional<run_as> postgres_user() {
  if (geteuid() != 0) return std::nullopt;
  passwd* pw = getpwnam("postgres");
  if (!pw)
    throw std::runtime_error(
        "running as root, but there is no `postgres` system user to run PostgreSQL as (PostgreSQL refuses root): "
        "install postgresql-15 (scripts/setup) or run yilian as an ordinary user");
  return run_as{pw->pw_uid, pw->pw_gid, pw->pw_name};
}

struct child_result {
  int status = -1;  // exit code, or -1 if it did not exit normally
  std::string output;
};

// Runs argv (argv[0] an absolute path) with stdout+stderr captured, as `user` when given.
child_result run_child(const std::vector<std::string>& argv, const std::optional<run_as>& user) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe");
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    throw std::system_error(errno, std::generic_category(), "fork");
  }
  if (pid == 0) {
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    if (user) {
      gid_t groups[1] = {user->gid};
      if (setgroups(1, groups) != 0 || setgid(user->gid) != 0 || setuid(user->uid) != 0) {
        static const char msg[] = "cannot switch to the postgres user\n";
        ssize_t ignored = write(2, msg, sizeof msg - 1);
        (void)ignored;
        _exit(126);
      }
    }
    if (chdir("/") != 0) _exit(126);
    execv(args[0], args.data());
    static const char msg[] = "cannot execute PostgreSQL binary\n";
    ssize_t ignored = write(2, msg, sizeof msg - 1);
    (void)ignored;
    _exit(127);
  }
  close(fds[1]);
  child_result result;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fds[0], buf, sizeof buf);
    if (n > 0) {
      result.output.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break;
  }
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// Can `user` enter (search) `dir`? Checked for real, in a child running as that user.
bool can_enter(const fs::path& dir, const run_as& user) {
  pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    gid_t groups[1] = {user.gid};
    if (setgroups(1, groups) != 0 || setgid(user.gid) != 0 || setuid(user.uid) != 0) _exit(2);
    _exit(access(dir.c_str(), X_OK) == 0 ? 0 : 1);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

std::string tail_lines(const std::string& text, std::size_t lines) {
  std::size_t pos = text.size();
  while (pos > 0 && (text[pos - 1] == '\n' || text[pos - 1] == ' ')) --pos;
  std::size_t end = pos;
  for (std::size_t n = 0; pos > 0; --pos)
    if (text[pos - 1] == '\n' && ++n == lines) break;
  return text.substr(pos, end - pos);
}

std::string read_file_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string find_bin_dir(const std::string& configured) {
  auto has = [](const fs::path& dir) {
    return access((dir / "pg_ctl").c_str(), X_OK) == 0 && access((dir / "initdb").c_str(), X_OK) == 0;
  };
  if (!configured.empty()) {
    if (has(configured)) return configured;
    throw std::runtime_error("PostgreSQL binaries (pg_ctl, initdb) not found in " + configured +
                             ": install postgresql-15 (scripts/setup) or fix the configured bin directory");
  }
  if (has("/usr/lib/postgresql/15/bin")) return "/usr/lib/postgresql/15/bin";
  if (const char* path = std::getenv("PATH")) {
    std::string_view rest = path;
    while (!rest.empty()) {
      auto colon = rest.find(':');
      std::string dir(rest.substr(0, colon));
      if (!dir.empty() && has(dir)) return dir;
      if (colon == std::string_view::npos) break;
      rest.remove_prefix(colon + 1);
    }
  }
  throw std::runtime_error(
      "PostgreSQL 15 binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/15/bin or PATH: "
      "install postgresql-15 (scripts/setup), or pass --database-url to use an existing server");
}

void chown_to(const fs::path& p, const std::optional<run_as>& user) {
  if (user && chown(p.c_str(), user->uid, user->gid) != 0)
    throw std::system_error(errno, std::generic_category(), "chown " + p.string() + " to postgres");
}

// Where everything lives for a data directory.
struct layout {
  fs::path data_dir;     // absolute
  fs::path cluster_dir;  // PGDATA
  fs::path socket_dir;
  fs::path log_file;
  int port = 0;
  bool relocated = false;  // cluster outside data_dir (root, data_dir not enterable by postgres)
};

fs::path location_note(const fs::path& data_dir) {
  return data_dir / "postgres.location";
}

layout compute_layout(const fs::path& data_dir_in, const std::optional<run_as>& user) {
  layout l;
  l.data_dir = fs::weakly_canonical(fs::absolute(data_dir_in));
  std::uint64_t h = fnv1a(l.data_dir.string());
  l.port = 54390 + static_cast<int>(h % 10);
  l.cluster_dir = l.data_dir / "postgres";
  l.log_file = l.data_dir / "postgres.log";
  // A cluster placed elsewhere earlier stays there, even if data_dir became reachable since.
  std::string noted;
  if (std::ifstream note(location_note(l.data_dir)); note) std::getline(note, noted);
  if (!noted.empty() && fs::exists(fs::path(noted) / "PG_VERSION")) {
    l.cluster_dir = noted;
    l.log_file = l.cluster_dir.parent_path() / "postgres.log";
    l.relocated = true;
  } else if (user && !can_enter(l.data_dir, *user)) {
    fs::path base = fs::path("/var/lib/yilian/clusters") / hex16(h);
    l.cluster_dir = base / "postgres";
    l.log_file = base / "postgres.log";
    l.relocated = true;
  }
  fs::path run = l.data_dir / "run";
  std::string socket_file = (run / (".s.PGSQL." + std::to_string(l.port))).string();
  if (l.relocated || socket_file.size() > max_socket_path)
    l.socket_dir = fs::path("/tmp") / ("yilian-" + hex16(h));
  else
    l.socket_dir = run;
  return l;
}

std::string percent_encode(std::string_view s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '/' || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string conf_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += '\'';
    out += c;
  }
  return out + "'";
}

bool pg_running(const std::string& bin, const layout& l, const std::optional<run_as>& user) {
  // pg_ctl status: 0 running, 3 not running, 4 no accessible data directory.
  auto r = run_child({bin + "/pg_ctl", "status", "-D", l.cluster_dir.string()}, user);
  return r.status == 0;
}

void make_dir(const fs::path& p, mode_t mode, const std::optional<run_as>& user) {
  std::error_code ec;
  fs::create_directories(p, ec);
  if (ec) throw std::runtime_error("cannot create " + p.string() + ": " + ec.message());
  chmod(p.c_str(), mode);
  chown_to(p, user);
}

}  // namespace

embedded_postgres::embedded_postgres(embedded_postgres_options options) : options_(std::move(options)) {}

embedded_postgres::~embedded_postgres() {
  if (started_ && !detached_) {
    try {
      stop();
    } catch (const std::exception& e) {
      std::cerr << "yilian: stopping the embedded PostgreSQL failed: " << e.what() << "\n";
    }
  }
  if (lock_fd_ >= 0) close(lock_fd_);
}

void embedded_postgres::start() {
  if (started_) return;
  std::string bin = find_bin_dir(options_.bin_dir);
  auto user = postgres_user();

  std::error_code ec;
  fs::create_directories(options_.data_dir, ec);
  if (ec) throw std::runtime_error("cannot create data directory " + options_.data_dir.string() + ": " + ec.message());

  // The lock: held (flock) for this object's life; O_CLOEXEC so the postmaster never inherits it.
  if (lock_fd_ < 0) {
    fs::path lock_path = options_.data_dir / "yilian.lock";
    int fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) throw std::runtime_error("cannot open lock file " + lock_path.string() + ": " + std::strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      int err = errno;
      std::string pid = read_file_text(lock_path);
      while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
      close(fd);
      if (err == EWOULDBLOCK)
        throw std::runtime_error("data directory " + fs::absolute(options_.data_dir).string() +
                                 " is in use by another yilian process (pid " + (pid.empty() ? "?" : pid) +
                                 "); stop it or choose another --data-dir");
      throw std::runtime_error("cannot lock " + lock_path.string() + ": " + std::strerror(err));
    }
    std::string me = std::to_string(getpid()) + "\n";
    if (ftruncate(fd, 0) == 0) {
      ssize_t ignored = pwrite(fd, me.data(), me.size(), 0);
      (void)ignored;
    }
    lock_fd_ = fd;
  }

  layout l = compute_layout(options_.data_dir, user);
  cluster_dir_ = l.cluster_dir;
  socket_dir_ = l.socket_dir;
  port_ = l.port;

  if (l.relocated) {
    make_dir(l.cluster_dir.parent_path().parent_path(), 0755, std::nullopt);
    make_dir(l.cluster_dir.parent_path(), 0755, user);
    std::ofstream note(location_note(l.data_dir), std::ios::trunc);
    note << l.cluster_dir.string() << "\n";
    static bool told = false;
    if (!told) {
      told = true;
      std::cerr << "yilian: " << l.data_dir.string()
                << " is not reachable by the postgres user; the PostgreSQL cluster lives in " << l.cluster_dir.string()
                << " (see " << location_note(l.data_dir).string() << ")\n";
    }
  }
  make_dir(l.socket_dir, 0700, user);

  // Log file: created by us so the postgres user (when we are root) may append to it.
  if (!fs::exists(l.log_file)) std::ofstream(l.log_file, std::ios::app);
  chown_to(l.log_file, user);

  if (!fs::exists(l.cluster_dir / "PG_VERSION")) {
    if (fs::exists(l.cluster_dir) && !fs::is_empty(l.cluster_dir))
      throw std::runtime_error(l.cluster_dir.string() +
                               " exists but is not a PostgreSQL cluster (no PG_VERSION); move it away or "
                               "choose another --data-dir");
    make_dir(l.cluster_dir, 0700, user);
    auto r = run_child({bin + "/initdb", "-D", l.cluster_dir.string(), "--auth=trust", "-U", "yilian",
                        "--encoding=UTF8", "--locale=C"},
                       user);
    if (r.status != 0) {
      // Leave no half-initialised cluster behind: the next start retries from scratch.
      fs::remove_all(l.cluster_dir, ec);
      throw std::runtime_error("initdb failed for " + l.cluster_dir.string() + ":\n" + tail_lines(r.output, 15));
    }
    std::ofstream conf(l.cluster_dir / "postgresql.conf", std::ios::app);
    conf << "\n# Yilian: per-start settings (socket, port) are rewritten at every start\n"
            "include_if_exists = 'yilian.conf'\n";
  }
  {
    fs::path yconf = l.cluster_dir / "yilian.conf";
    std::ofstream conf(yconf, std::ios::trunc);
    conf << "# Written by yilian at every start; edit postgresql.conf for your own settings.\n"
         << "listen_addresses = ''\n"
         << "unix_socket_directories = " << conf_quote(l.socket_dir.string()) << "\n"
         << "port = " << l.port << "\n"
         << "max_connections = 100\n"
         << "shared_buffers = 64MB\n"
         << "fsync = on\n";
    conf.close();
    if (!conf) throw std::runtime_error("cannot write " + yconf.string());
    chown_to(yconf, user);
  }

  if (pg_running(bin, l, user)) {
    // Left running by a detached or crashed yilian on this directory; we hold the lock now, so
    // it is ours to use and to stop.
    started_ = true;
  } else {
    auto r = run_child(
        {bin + "/pg_ctl", "start", "-w", "-t", "120", "-D", l.cluster_dir.string(), "-l", l.log_file.string()}, user);
    if (r.status != 0)
      throw std::runtime_error("PostgreSQL did not start (cluster " + l.cluster_dir.string() + ", log " +
                               l.log_file.string() + "):\n" + tail_lines(r.output, 5) + "\n" +
                               tail_lines(read_file_text(l.log_file), 15));
    started_ = true;
  }

  try {
    pqxx::connection c(url_for("postgres"));
    pqxx::nontransaction tx(c);
    auto rows = tx.exec_params("SELECT 1 FROM pg_database WHERE datname = $1", options_.database);
    if (rows.empty()) {
      try {
        tx.exec("CREATE DATABASE " + c.quote_name(options_.database));
      } catch (const pqxx::sql_error& e) {
        // Another process created it in between (duplicate_database): fine.
        if (e.sqlstate() != "42P04") throw;
      }
    }
  } catch (const std::exception& e) {
    throw std::runtime_error("PostgreSQL started but creating database '" + options_.database +
                             "' failed: " + e.what());
  }
}

void embedded_postgres::stop() {
  if (!started_) return;
  std::string bin = find_bin_dir(options_.bin_dir);
  auto user = postgres_user();
  auto r = run_child({bin + "/pg_ctl", "stop", "-w", "-t", "120", "-m", "fast", "-D", cluster_dir_.string()}, user);
  started_ = false;
  if (socket_dir_.string().rfind("/tmp/yilian-", 0) == 0) {
    std::error_code ignored;
    fs::remove(socket_dir_, ignored);  // only when empty (the server removed its socket)
  }
  if (r.status != 0 && r.output.find("Is server running?") == std::string::npos)
    throw std::runtime_error("pg_ctl stop failed for " + cluster_dir_.string() + ":\n" + tail_lines(r.output, 10));
}

std::string embedded_postgres::url() const {
  return url_for(options_.database);
}

std::string embedded_postgres::url_for(std::string_view database) const {
  return "postgresql:///" + percent_encode(database) + "?host=" + percent_encode(socket_dir_.string()) +
         "&port=" + std::to_string(port_) + "&user=yilian";
}

void embedded_postgres::stop_cluster(const std::filesystem::path& data_dir) {
  std::string bin = find_bin_dir({});
  auto user = postgres_user();
  fs::path abs = fs::weakly_canonical(fs::absolute(data_dir));
  fs::path cluster = abs / "postgres";
  if (fs::exists(location_note(abs))) {
    std::string where = read_file_text(location_note(abs));
    while (!where.empty() && (where.back() == '\n' || where.back() == ' ')) where.pop_back();
    if (!where.empty()) cluster = where;
  }
  if (!fs::exists(cluster / "PG_VERSION")) return;  // nothing was ever started here
  auto r = run_child({bin + "/pg_ctl", "stop", "-w", "-t", "120", "-m", "fast", "-D", cluster.string()}, user);
  if (r.status != 0 && r.output.find("Is server running?") == std::string::npos)
    throw std::runtime_error("pg_ctl stop failed for " + cluster.string() + ":\n" + tail_lines(r.output, 10));
}

}  // namespace yilian::gateway
