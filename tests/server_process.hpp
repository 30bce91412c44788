// `yilian serve` as a child process for tests: started with extra flags, its output captured,
// waited for until it listens, stopped with SIGTERM or killed.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace yilian::test {

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

  // The port printed after `marker` ("HL7 v2 over MLLP on 127.0.0.1:"), 0 when not (yet) there.
  std::uint16_t port_after(const std::string& marker) const {
    std::string text = output();
    auto at = text.find(marker);
    return at == std::string::npos ? 0 : static_cast<std::uint16_t>(std::stoi(text.substr(at + marker.size())));
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

inline fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("yilian-test-" + name + "-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

}  // namespace yilian::test
