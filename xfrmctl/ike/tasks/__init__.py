"""One task per exchange (strongSwan's libcharon/sa/ikev2/tasks): each module has the
initiator's task (`build` the request, `process` the answer) and the responder's
`respond` for the same exchange. A task object lives only while its exchange is queued
or in flight; what outlives an exchange is on the IkeSa or its ChildSas."""
