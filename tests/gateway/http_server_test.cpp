// http_server over real sockets: a plain POSIX client (no Beast here, to keep compile time down)
// talks to a server on an ephemeral port whose handler echoes the request.
#include "yilian/gateway/http_server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <doctest/doctest.h>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include "yilian/gateway/worker_pool.hpp"

using namespace yilian::gateway;
using namespace std::chrono_literals;

namespace {

// A connected client socket; reads whole responses (Content-Length framed).
class client {
 public:
  explicit client(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) throw std::runtime_error("connect");
  }
  ~client() { ::close(fd_); }
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  void send(const std::string& data) {
    std::size_t sent = 0;
    while (sent < data.size()) {
      auto n = ::send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) throw std::runtime_error("send");
      sent += static_cast<std::size_t>(n);
    }
  }

  // Whole response (head + body) or what arrived before EOF / timeout.
  std::string receive(std::chrono::milliseconds timeout = 5000ms) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto head_end = buffer_.find("\r\n\r\n");
      if (head_end != std::string::npos) {
        std::size_t length = 0;
        auto cl = lower(buffer_.substr(0, head_end)).find("content-length:");
        if (cl != std::string::npos) length = std::stoul(buffer_.substr(cl + 15));
        if (buffer_.size() >= head_end + 4 + length) {
          auto response = buffer_.substr(0, head_end + 4 + length);
          buffer_.erase(0, head_end + 4 + length);
          return response;
        }
      }
      if (!read_some(deadline)) {
        auto rest = std::move(buffer_);
        buffer_.clear();
        return rest;
      }
    }
  }

  // True when the server closed the connection within the timeout.
  bool closed_by_peer(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (read_some(deadline)) {
    }
    return eof_;
  }

 private:
  static std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  }
  bool read_some(std::chrono::steady_clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    char chunk[4096];
    auto n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n <= 0) {
      eof_ = true;
      return false;
    }
    buffer_.append(chunk, static_cast<std::size_t>(n));
    return true;
  }

  int fd_ = -1;
  std::string buffer_;
  bool eof_ = false;
};

int status_of(const std::string& response) {
  if (response.size() < 12 || response.compare(0, 5, "HTTP/") != 0) return 0;
  return std::stoi(response.substr(9, 3));
}

std::string body_of(const std::string& response) {
  auto pos = response.find("\r\n\r\n");
  return pos == std::string::npos ? std::string() : response.substr(pos + 4);
}

http_response echo(const http_request& req) {
  if (req.target == "/throw") throw std::runtime_error("handler blew up with SECRET detail");
  if (req.target == "/slow") std::this_thread::sleep_for(300ms);
  http_response res;
  res.set_header("Content-Type", "text/plain");
  res.body = req.method + " " + req.target + " " + req.body;
  return res;
}

struct fixture {
  explicit fixture(http_server_options extra = {}) : workers(2), server(configure(extra), echo, workers,
                                                                        [this](const request_log_entry&) { ++logged; }) {
    server.start();
  }
  static http_server_options configure(http_server_options o) {
    o.host = "127.0.0.1";
    o.port = 0;
    o.io_threads = 2;
    return o;
  }
  std::atomic<int> logged{0};
  worker_pool workers;
  http_server server;
};

}  // namespace

TEST_CASE("http_server: GET, keep-alive and POST body") {
  fixture f;
  REQUIRE(f.server.port() != 0);
  client c(f.server.port());
  c.send("GET /fhir/metadata?x=1 HTTP/1.1\r\nHost: t\r\n\r\n");
  auto first = c.receive();
  CHECK(status_of(first) == 200);
  CHECK(first.find("Server: yilian\r\n") != std::string::npos);
  CHECK(body_of(first) == "GET /fhir/metadata?x=1 ");

  // Same connection, second request.
  c.send("POST /fhir/Patient HTTP/1.1\r\nHost: t\r\nContent-Type: application/fhir+json\r\nContent-Length: 27\r\n\r\n"
         "{\"resourceType\":\"Patient\"}\n");
  auto second = c.receive();
  CHECK(status_of(second) == 200);
  CHECK(body_of(second) == "POST /fhir/Patient {\"resourceType\":\"Patient\"}\n");

  // HEAD: the GET headers, no body.
  c.send("HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n");
  auto head = c.receive(1000ms);
  CHECK(status_of(head) == 200);
  CHECK(head.find("Content-Length: 8\r\n") != std::string::npos);
  CHECK(body_of(head).empty());

  c.send("GET /bye HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
  CHECK(status_of(c.receive()) == 200);
  CHECK(c.closed_by_peer(2000ms));
  CHECK(f.logged.load() == 4);
}

TEST_CASE("http_server: body over the limit is 413 with an OperationOutcome") {
  http_server_options o;
  o.body_limit = 1024;
  fixture f(o);
  client c(f.server.port());
  std::string body(2000, 'x');
  c.send("POST /fhir/Patient HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n" + body);
  auto res = c.receive();
  CHECK(status_of(res) == 413);
  CHECK(body_of(res) ==
        R"({"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"too-costly",)"
        R"("diagnostics":"Request body exceeds the limit of 1024 bytes"}]})");
}

TEST_CASE("http_server: malformed HTTP is 400") {
  fixture f;
  client c(f.server.port());
  c.send("GET /x HTTP/1.1\r\nHost t\r\n\r\n");
  auto res = c.receive();
  CHECK(status_of(res) == 400);
  CHECK(body_of(res).find("OperationOutcome") != std::string::npos);
}

TEST_CASE("http_server: a throwing handler is answered 500 and the server keeps serving") {
  fixture f;
  client c(f.server.port());
  c.send("GET /throw HTTP/1.1\r\nHost: t\r\n\r\n");
  auto res = c.receive();
  CHECK(status_of(res) == 500);
  auto body = body_of(res);
  CHECK(body.find(R"("resourceType":"OperationOutcome")") != std::string::npos);
  CHECK(body.find("correlation id http-") != std::string::npos);
  CHECK(body.find("SECRET") == std::string::npos);
  c.send("GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(status_of(c.receive()) == 200);
}

TEST_CASE("http_server: stop() lets an in-flight request finish, then closes idle connections") {
  fixture f;
  client busy(f.server.port());
  client idle(f.server.port());
  idle.send("GET /warm HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(status_of(idle.receive()) == 200);
  busy.send("GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
  std::this_thread::sleep_for(50ms);  // the request is now with a worker
  auto started = std::chrono::steady_clock::now();
  f.server.stop(5000ms);
  f.server.wait();
  CHECK(std::chrono::steady_clock::now() - started < 3000ms);
  auto res = busy.receive(1000ms);
  CHECK(status_of(res) == 200);
  CHECK(body_of(res) == "GET /slow ");
  CHECK(res.find("Connection: close\r\n") != std::string::npos);
  CHECK(idle.closed_by_peer(1000ms));
  f.server.stop();  // twice is fine
}

TEST_CASE("http_server: an idle keep-alive connection is closed after idle_timeout") {
  http_server_options o;
  o.idle_timeout = 200ms;
  fixture f(o);
  client c(f.server.port());
  c.send("GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(status_of(c.receive()) == 200);
  auto started = std::chrono::steady_clock::now();
  CHECK(c.closed_by_peer(3000ms));
  CHECK(std::chrono::steady_clock::now() - started >= 150ms);
}

TEST_CASE("http_server: Expect: 100-continue gets an interim 100 before the body is sent") {
  fixture f;
  client c(f.server.port());
  c.send("POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
  auto interim = c.receive(2000ms);
  CHECK(interim.rfind("HTTP/1.1 100 Continue\r\n", 0) == 0);
  c.send("abc");
  auto res = c.receive();
  CHECK(status_of(res) == 200);
  CHECK(body_of(res) == "POST /p abc");
}

TEST_CASE("http_server: destroying the server while a handler runs waits for the worker, not for ever") {
  auto f = std::make_unique<fixture>();
  client c(f->server.port());
  c.send("GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
  std::this_thread::sleep_for(50ms);
  auto started = std::chrono::steady_clock::now();
  f.reset();  // stop(0): the in-flight request is cut, its worker finishes first
  CHECK(std::chrono::steady_clock::now() - started < 2000ms);
  CHECK(c.closed_by_peer(1000ms));
}
