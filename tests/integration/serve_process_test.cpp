// `yilian serve` as a process with its embedded PostgreSQL: data survives a stop/start, a second
// server on the same data directory is refused, SIGTERM shuts down cleanly, and concurrent
// If-Match updates over real HTTP connections never lose a version.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "http_client.hpp"

namespace {

namespace fs = std::filesystem;

struct server_process {
  pid_t pid = -1;
  int exit_status = -1;  // once reaped
  fs::path log;
  fs::path data;
  std::uint16_t port = 0;

  server_process(const fs::path& data_dir, const fs::path& log_file, std::vector<std::string> extra = {})
      : log(log_file), data(data_dir) {
    std::vector<std::string> args{YILIAN_BINARY, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir.string(),
                                  "--workers", "4"};
    args.insert(args.end(), extra.begin(), extra.end());
    pid = fork();
    if (pid == 0) {
      FILE* out = std::freopen(log_file.c_str(), "w", stdout);
      (void)out;
      dup2(fileno(stdout), STDERR_FILENO);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }

  std::string output() const {
    std::ifstream in(log);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
  }

  // Waits for the "listening on" line; false if the process exited or time ran out.
  bool wait_listening(std::chrono::seconds limit = std::chrono::seconds(60)) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      std::string text = output();
      if (auto at = text.find("listening on http://127.0.0.1:"); at != std::string::npos) {
        port = static_cast<std::uint16_t>(std::stoi(text.substr(at + std::string("listening on http://127.0.0.1:").size())));
        return true;
      }
      if (reap()) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  // True once the process has exited (its status in exit_status).
  bool reap() {
    if (pid < 0) return true;
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) != pid) return false;
    pid = -1;
    exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return true;
  }

  // Sends SIGTERM and returns the exit status (-1 on timeout).
  int terminate(std::chrono::seconds limit = std::chrono::seconds(60)) {
    if (pid > 0) kill(pid, SIGTERM);
    return wait_exit(limit);
  }

  int wait_exit(std::chrono::seconds limit = std::chrono::seconds(60)) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      if (reap()) return exit_status;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return -1;
  }

  // A test that failed half-way kills the server; its PostgreSQL would outlive it, so stop that too.
  ~server_process() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      std::string stop = std::string(YILIAN_BINARY) + " postgres stop --data-dir '" + data.string() + "' >/dev/null 2>&1";
      int ignored = std::system(stop.c_str());
      (void)ignored;
    }
  }
};

fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("yilian-test-" + name + "-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string field(const std::string& json, const std::string& name) {
  auto at = json.find("\"" + name + "\":\"");
  if (at == std::string::npos) return {};
  at += name.size() + 4;
  return json.substr(at, json.find('"', at) - at);
}

}  // namespace

TEST_CASE("serve: data survives a restart; a second server on the same data dir is refused") {
  fs::path dir = fresh_dir("restart");
  std::string id;
  {
    server_process server(dir / "data", dir / "first.log");
    REQUIRE_MESSAGE(server.wait_listening(), server.output());
    yilian::test::http_client client(server.port);
    auto health = client.request("GET", "/healthz");
    CHECK(health.status == 200);
    auto created = client.request("POST", "/fhir/Patient",
                                  R"({"resourceType":"Patient","name":[{"text":"重启测试"}]})",
                                  {{"Content-Type", "application/fhir+json"}});
    REQUIRE(created.status == 201);
    id = field(created.body, "id");
    REQUIRE_FALSE(id.empty());

    server_process second(dir / "data", dir / "second.log");
    CHECK_FALSE(second.wait_listening(std::chrono::seconds(30)));
    CHECK(second.wait_exit() != 0);
    CHECK(second.output().find("in use") != std::string::npos);

    auto metrics = client.request("GET", "/metrics");
    CHECK(metrics.body.find("yilian_http_requests_total{method=\"POST\",status=\"201\"} 1") != std::string::npos);
    client.close_socket();
    CHECK(server.terminate() == 0);
    CHECK(server.output().find("Embedded PostgreSQL stopped") != std::string::npos);
  }
  {
    server_process server(dir / "data", dir / "third.log");
    REQUIRE_MESSAGE(server.wait_listening(), server.output());
    yilian::test::http_client client(server.port);
    auto read = client.request("GET", "/fhir/Patient/" + id);
    CHECK(read.status == 200);
    CHECK(read.body.find("重启测试") != std::string::npos);
    client.close_socket();
    CHECK(server.terminate() == 0);
  }
  fs::remove_all(dir);
}

TEST_CASE("serve: parallel HTTP clients updating one resource with If-Match lose no version") {
  fs::path dir = fresh_dir("ifmatch");
  server_process server(dir / "data", dir / "server.log", {"--access-log", "off"});
  REQUIRE_MESSAGE(server.wait_listening(), server.output());
  std::string id;
  {
    yilian::test::http_client client(server.port);
    auto created = client.request("POST", "/fhir/Patient", R"({"resourceType":"Patient","active":true})",
                                  {{"Content-Type", "application/fhir+json"}});
    REQUIRE(created.status == 201);
    id = field(created.body, "id");
  }
  constexpr int clients = 8, rounds = 15;
  std::atomic<int> ok{0}, conflict{0}, other{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      yilian::test::http_client client(server.port);
      for (int r = 0; r < rounds; ++r) {
        auto current = client.request("GET", "/fhir/Patient/" + id);
        std::string body = R"({"resourceType":"Patient","id":")" + id + R"(","active":)" +
                           ((c + r) % 2 ? "true" : "false") + "}";
        auto put = client.request("PUT", "/fhir/Patient/" + id, body,
                                  {{"Content-Type", "application/fhir+json"}, {"If-Match", current.header("ETag")}});
        if (put.status == 200) ++ok;
        else if (put.status == 412) ++conflict;
        else ++other;
      }
    });
  for (auto& t : threads) t.join();
  CHECK(other == 0);
  CHECK(ok + conflict == clients * rounds);
  yilian::test::http_client client(server.port);
  auto final_read = client.request("GET", "/fhir/Patient/" + id);
  CHECK(final_read.header("ETag") == "W/\"" + std::to_string(ok + 1) + "\"");
  client.close_socket();
  CHECK(server.terminate() == 0);
  fs::remove_all(dir);
}
