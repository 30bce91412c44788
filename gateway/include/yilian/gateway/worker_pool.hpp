// Fixed set of threads that run blocking work (database calls) off the I/O threads.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace yilian::gateway {

class worker_pool {
 public:
  explicit worker_pool(unsigned threads);
  ~worker_pool();  // finishes queued work, then joins
  worker_pool(const worker_pool&) = delete;
  worker_pool& operator=(const worker_pool&) = delete;

  void submit(std::function<void()> task);
  unsigned size() const noexcept { return static_cast<unsigned>(threads_.size()); }
  std::size_t queued() const;
  void shutdown();

 private:
  void run();

  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace yilian::gateway
